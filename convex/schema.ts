import { defineSchema } from "convex/server";
import { healthTables } from "./healthTables";

export default defineSchema({ ...healthTables });
