// Run once by the official mongo image, as the root user, when its data volume is empty
// (/docker-entrypoint-initdb.d). Creates the user that coordinator and workers connect as,
// with the least privilege they need: readWrite on the hyperfleet database only (their jobs,
// GridFS attachments, counters and indexes). It cannot read other databases or manage users.
const dbName = process.env.HYPERFLEET_DB || "hyperfleet";
const user = process.env.HYPERFLEET_MONGO_USER;
const pwd = process.env.HYPERFLEET_MONGO_PASSWORD;
if (!user || !pwd) {
  throw new Error("HYPERFLEET_MONGO_USER and HYPERFLEET_MONGO_PASSWORD must be set (see .env.example)");
}
db.getSiblingDB(dbName).createUser({
  user: user,
  pwd: pwd,
  roles: [{ role: "readWrite", db: dbName }],
  mechanisms: ["SCRAM-SHA-256"],
});
print(`hyperfleet: created user ${user} with readWrite on ${dbName}`);
