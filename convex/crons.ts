import { cronJobs } from "convex/server";
import { internal } from "./_generated/api";

const crons = cronJobs();

crons.interval("purge expired sidecar health rows", { minutes: 5 }, internal.health.purgeExpired, {});

export default crons;
