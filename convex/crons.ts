import { cronJobs } from "convex/server";
import { internal } from "./_generated/api";

const crons = cronJobs();

crons.hourly("purge expired health-sidecar instances", { minuteUTC: 7 }, internal.health.purgeExpired, {});

export default crons;
