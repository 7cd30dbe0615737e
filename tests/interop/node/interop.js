// Streams interop check in Node.js, built from protos/streams/v1/streams.proto alone.
//
//   node interop.js TARGET SPACE            run every check against a live server
//   node interop.js --produce TARGET SPACE SEGMENT N
//                                           (child mode) produce N records, one Produce each
//
// It produces (one segment, then a multi-segment transaction and its retry),
// consumes a segment and the whole space, follows the space while a child
// process produces, peeks, commits and reads the offset back, lists, checks
// the error statuses, then trims and watches segments (WatchSegments: snapshot,
// then live updates, trims and deletes). Every result is compared with what the contract says;
// the first mismatch prints "MISMATCH: ..." on stderr and exits with 1.
// On success the last line on stdout is "interop ok: N checks".
"use strict";

const path = require("node:path");
const { spawn } = require("node:child_process");
const grpc = require("@grpc/grpc-js");
const protoLoader = require("@grpc/proto-loader");

const PROTO_ROOT = path.resolve(__dirname, "..", "..", "..", "protos");

function loadService() {
  const definition = protoLoader.loadSync("streams/v1/streams.proto", {
    // google/protobuf/timestamp.proto comes with proto-loader (protobufjs);
    // the proto itself is found under the repository's protos/ folder.
    includeDirs: [PROTO_ROOT],
    keepCase: true, // field names exactly as the contract spells them
    longs: String, // uint64 as decimal strings: no precision lost
    enums: String,
    defaults: true,
    oneofs: true,
  });
  const proto = grpc.loadPackageDefinition(definition);
  return proto.streams.v1.StreamsService;
}

function connect(target) {
  const Service = loadService();
  return new Service(target, grpc.credentials.createInsecure());
}

let checks = 0;

class Mismatch extends Error {}

function check(condition, what, actual) {
  checks += 1;
  if (!condition) {
    throw new Mismatch(`${what} (got ${JSON.stringify(actual)})`);
  }
}

function equal(actual, expected, what) {
  const a = JSON.stringify(actual);
  const e = JSON.stringify(expected);
  check(a === e, `${what}: expected ${e}`, actual);
}

function call(client, method, request) {
  return new Promise((resolve, reject) => {
    client[method](request, { deadline: Date.now() + 10_000 }, (err, response) =>
      err ? reject(err) : resolve(response),
    );
  });
}

// A call that must succeed: an error status is a mismatch with the contract.
async function unary(client, method, request) {
  try {
    return await call(client, method, request);
  } catch (err) {
    checks += 1;
    throw new Mismatch(`${method} ${JSON.stringify(request)}: expected success, got ${err.message}`);
  }
}

async function expectStatus(client, method, request, code, what) {
  try {
    await call(client, method, request);
  } catch (err) {
    equal(grpc.status[err.code], grpc.status[code], `${what}: status`);
    check(typeof err.details === "string" && err.details.length > 0, `${what}: a message`, err);
    return err;
  }
  check(false, `${what}: expected status ${grpc.status[code]}, the call succeeded`, null);
  return null;
}

// Reads a Consume stream to its end; `onReady` runs when the response headers arrive.
function consume(client, request, { onReady, timeoutMs = 15_000 } = {}) {
  return new Promise((resolve, reject) => {
    const records = [];
    const call = client.Consume(request, { deadline: Date.now() + timeoutMs });
    call.on("metadata", () => {
      if (onReady) {
        onReady();
      }
    });
    call.on("data", (response) => {
      check(response.records.length > 0, "each ConsumeResponse has at least one record", 0);
      records.push(...response.records);
    });
    call.on("error", reject);
    call.on("end", () => resolve(records));
  });
}

// A server stream read message by message: `next()` resolves with the next
// response (or rejects with the stream's error); `ended` resolves once the
// server ends the stream with OK.
function reader(call) {
  const queued = [];
  const waiting = [];
  let failure = null;
  let resolveEnded;
  const ended = new Promise((resolve) => {
    resolveEnded = resolve;
  });
  call.on("data", (response) => {
    const resolve = waiting.shift();
    if (resolve) {
      resolve.resolve(response);
    } else {
      queued.push(response);
    }
  });
  call.on("error", (err) => {
    failure = err;
    waiting.splice(0).forEach((w) => w.reject(err));
    resolveEnded(err);
  });
  call.on("status", (status) => {
    if (status.code === grpc.status.OK) {
      resolveEnded(null);
    }
  });
  return {
    call,
    ended,
    next() {
      if (queued.length > 0) {
        return Promise.resolve(queued.shift());
      }
      if (failure) {
        return Promise.reject(failure);
      }
      return new Promise((resolve, reject) => waiting.push({ resolve, reject }));
    },
  };
}

function watch(client, request, timeoutMs = 15_000) {
  return reader(client.WatchSegments(request, { deadline: Date.now() + timeoutMs }));
}

const text = (record) => Buffer.from(record.payload).toString("utf8");
const seconds = (ts) => Number(ts.seconds) + ts.nanos / 1e9;

async function produceChild(target, space, segment, count) {
  const client = connect(target);
  for (let i = 1; i <= count; i += 1) {
    await unary(client, "Produce", {
      space,
      transaction_id: `node-live-${space}-${i}`,
      writes: [{ segment, records: [{ payload: Buffer.from(`live ${i}`) }] }],
    });
  }
  client.close();
}

function runChild(target, space, segment, count) {
  return new Promise((resolve, reject) => {
    const child = spawn(
      process.execPath,
      [__filename, "--produce", target, space, segment, String(count)],
      { stdio: ["ignore", "inherit", "inherit"] },
    );
    child.on("error", reject);
    child.on("exit", (code) =>
      code === 0 ? resolve() : reject(new Mismatch(`producer child exited with ${code}`)),
    );
  });
}

async function main(target, space) {
  const client = connect(target);

  // -- produce: one segment, expected_sequence 0, metadata --------------------------------
  const first = await unary(client, "Produce", {
    space,
    writes: [
      {
        segment: "orders",
        expected_sequence: "0",
        records: [
          { payload: Buffer.from("order 1"), metadata: { type: "created", "": "empty key" } },
          { payload: Buffer.from([0xff, 0x00, 0xfe]) },
        ],
      },
    ],
  });
  equal(first.acks.length, 1, "Produce: one ack per write");
  equal(first.acks[0].segment, "orders", "Produce: ack segment");
  equal([first.acks[0].first_sequence, first.acks[0].last_sequence], ["1", "2"], "Produce: sequences");
  equal([first.first_position, first.last_position], ["1", "2"], "Produce: positions");
  equal(first.duplicate, false, "Produce: not a duplicate");
  check(seconds(first.timestamp) > 1.6e9, "Produce: a server timestamp", first.timestamp);

  // -- a transaction over two segments, then its retry -------------------------------------
  const txn = {
    space,
    transaction_id: `node-txn-${space}`,
    writes: [
      { segment: "orders", expected_sequence: "2", records: [{ payload: Buffer.from("order 3") }] },
      {
        segment: "audit",
        records: [{ payload: Buffer.from("audit 1") }, { payload: Buffer.from("audit 2") }],
      },
    ],
  };
  const multi = await unary(client, "Produce", txn);
  equal(
    multi.acks.map((a) => [a.segment, a.first_sequence, a.last_sequence]),
    [
      ["orders", "3", "3"],
      ["audit", "1", "2"],
    ],
    "transaction: acks in write order",
  );
  equal([multi.first_position, multi.last_position], ["3", "5"], "transaction: positions");
  const again = await unary(client, "Produce", txn);
  equal(again.duplicate, true, "transaction retry: duplicate");
  equal([again.first_position, again.last_position], ["3", "5"], "transaction retry: original");
  equal(seconds(again.timestamp), seconds(multi.timestamp), "transaction retry: same timestamp");
  await expectStatus(
    client, "Produce",
    { ...txn, writes: [{ segment: "orders", records: [{ payload: Buffer.from("other") }] }] },
    grpc.status.ALREADY_EXISTS, "transaction id reused with other writes",
  );
  const stale = await expectStatus(
    client, "Produce",
    { space, writes: [{ segment: "orders", expected_sequence: "1", records: [{ payload: Buffer.from("x") }] }] },
    grpc.status.FAILED_PRECONDITION, "expected_sequence mismatch",
  );
  check(stale.details.includes("3"), "expected_sequence mismatch names the actual sequence", stale.details);

  // -- consume a segment, then the space -----------------------------------------------------
  const orders = await consume(client, { space, segment: "orders" });
  equal(orders.map((r) => r.sequence), ["1", "2", "3"], "consume segment: sequences");
  equal(orders.map((r) => r.position), ["1", "2", "3"], "consume segment: positions");
  equal(text(orders[0]), "order 1", "consume segment: payload");
  equal([...Buffer.from(orders[1].payload)], [0xff, 0x00, 0xfe], "consume segment: binary payload");
  equal(orders[0].metadata, { type: "created", "": "empty key" }, "consume segment: metadata");
  equal(orders[2].transaction_id, `node-txn-${space}`, "consume segment: transaction id");
  const all = await consume(client, { space, from_offset: "2", max_batch: 2 });
  equal(all.map((r) => [r.position, r.segment, r.sequence]),
    [["2", "orders", "2"], ["3", "orders", "3"], ["4", "audit", "1"], ["5", "audit", "2"]],
    "consume space from 2: commit order across segments");
  equal(all.map((r) => r.space), [space, space, space, space], "consume space: space field");
  const bounded = await consume(client, { space, segment: "audit", to_offset: "1" });
  equal(bounded.map(text), ["audit 1"], "consume to_offset 1");
  const unknown = await consume(client, { space, segment: "no-such-segment" });
  equal(unknown.length, 0, "consume unknown segment: empty, no error");

  // -- follow the space while another process produces ------------------------------------
  let started = false;
  let childDone = null;
  const live = await consume(
    client,
    { space, from_end: true, follow: true, limit: "3" },
    {
      onReady: () => {
        // Headers mean the start is fixed: everything produced from now on will arrive.
        started = true;
        childDone = runChild(target, space, "live", 3);
      },
    },
  );
  check(started, "follow: response headers before records", started);
  await childDone;
  equal(live.map(text), ["live 1", "live 2", "live 3"], "follow: records from the other process");
  equal(live.map((r) => r.position), ["6", "7", "8"], "follow: positions continue the space");
  equal(live.map((r) => r.sequence), ["1", "2", "3"], "follow: sequences in the new segment");

  // -- peek ------------------------------------------------------------------------------------
  const peekAudit = await unary(client, "Peek", { space, segment: "audit" });
  equal([peekAudit.record.sequence, text(peekAudit.record)], ["2", "audit 2"], "peek segment");
  const peekSpace = await unary(client, "Peek", { space });
  equal([peekSpace.record.position, peekSpace.record.segment], ["8", "live"], "peek space");
  await expectStatus(client, "Peek", { space, segment: "nothing" }, grpc.status.NOT_FOUND,
    "peek an empty segment");

  // -- commit, read it back, resume from it ------------------------------------------------
  await expectStatus(client, "GetOffset", { consumer: "node", space }, grpc.status.NOT_FOUND,
    "offset never committed");
  const committed = await unary(client, "Commit", { consumer: "node", space, offset: "4" });
  equal(committed.offset, "4", "commit: offset as stored");
  const read = await unary(client, "GetOffset", { consumer: "node", space });
  equal(read.offset, "4", "get offset: the committed one");
  const segmentOffset = await unary(client, "Commit",
    { consumer: "node", space, segment: "orders", offset: "2", expected_offset: "0" });
  equal(segmentOffset.offset, "2", "commit segment offset with compare-and-set");
  equal((await unary(client, "GetOffset", { consumer: "node", space, segment: "orders" })).offset,
    "2", "segment offset is separate from the space offset");
  const resumed = await consume(client, { space, from_consumer: "node" });
  equal(resumed.map((r) => r.position), ["5", "6", "7", "8"], "consume from_consumer: after 4");
  await expectStatus(client, "Commit", { consumer: "node", space, offset: "99" },
    grpc.status.OUT_OF_RANGE, "commit past the end");
  await expectStatus(client, "Commit", { consumer: "node", space, offset: "5", expected_offset: "3" },
    grpc.status.FAILED_PRECONDITION, "commit compare-and-set mismatch");

  // -- lists and a bad request -------------------------------------------------------------
  const spaces = await unary(client, "ListSpaces", { page_size: 1000 });
  const mine = spaces.spaces.find((s) => s.name === space);
  check(mine !== undefined, "list spaces: ours is listed", spaces.spaces.map((s) => s.name));
  equal(mine.last_position, "8", "list spaces: last position");
  const segments = await unary(client, "ListSegments", { space, page_size: 2 });
  equal(segments.segments.map((s) => s.name), ["audit", "live"], "list segments: first page");
  check(segments.next_page_token !== "", "list segments: a next page", segments.next_page_token);
  const rest = await unary(client, "ListSegments",
    { space, page_size: 2, page_token: segments.next_page_token });
  equal(rest.segments.map((s) => [s.name, s.last_sequence]), [["orders", "3"]],
    "list segments: last page");
  equal(rest.next_page_token, "", "list segments: no page after the last");
  await expectStatus(client, "Peek", { space: "bad\u0001name" }, grpc.status.INVALID_ARGUMENT,
    "control character in a name");

  // -- trim, then watch segments (data lifecycle) ------------------------------------------
  const trimmed = await unary(client, "Trim", { space, segment: "live", before_offset: "2" });
  equal(trimmed.first_offset, "2", "Trim: first retained offset");
  const afterTrim = await consume(client, { space, segment: "live", from_offset: "1" });
  equal(afterTrim.map((r) => r.sequence), ["2", "3"], "consume after Trim: starts at the first kept");
  const again2 = await unary(client, "Trim", { space, segment: "live", before_offset: "1" });
  equal(again2.first_offset, "2", "Trim below the first offset: changes nothing");
  await expectStatus(client, "Trim", { space, segment: "live", before_offset: "5" },
    grpc.status.OUT_OF_RANGE, "Trim past the last offset + 1");
  await expectStatus(client, "Trim", { space, segment: "nothing", before_offset: "1" },
    grpc.status.NOT_FOUND, "Trim an unknown segment");
  const byTime = await unary(client, "Trim",
    { space, segment: "audit", before_timestamp: { seconds: "0", nanos: 0 } });
  equal(byTime.first_offset, "1", "Trim before 1970: nothing removed");
  const info = await unary(client, "GetSegment", { space, segment: "live" });
  equal([info.segment.first_sequence, info.segment.last_sequence, info.segment.record_count],
    ["2", "3", "2"], "GetSegment after Trim: first, last, count");

  const watcher = watch(client, { space, prefix: "" });
  const snapshot = [];
  for (;;) {
    const response = await watcher.next();
    snapshot.push(...response.segments);
    equal(response.deleted, [], "WatchSegments snapshot: nothing deleted");
    if (response.snapshot_complete) {
      break;
    }
  }
  equal(snapshot.map((s) => [s.name, s.first_sequence, s.last_sequence]),
    [["audit", "1", "2"], ["live", "2", "3"], ["orders", "1", "3"]],
    "WatchSegments snapshot: every segment in name order");
  await unary(client, "Produce",
    { space, writes: [{ segment: "live", records: [{ payload: Buffer.from("live 4") }] }] });
  const appended = await watcher.next();
  equal(appended.segments.map((s) => [s.name, s.last_sequence, s.record_count]),
    [["live", "4", "3"]], "WatchSegments: an append");
  await unary(client, "Trim", { space, segment: "live", before_offset: "4" });
  const cut = await watcher.next();
  equal(cut.segments.map((s) => [s.name, s.first_sequence, s.record_count]),
    [["live", "4", "1"]], "WatchSegments: a trim");
  await unary(client, "DeleteSegment", { space, segment: "audit" });
  const removed = await watcher.next();
  equal([removed.segments.length, removed.deleted], [0, ["audit"]], "WatchSegments: a delete");
  watcher.call.cancel();

  await groups(client, space);

  client.close();
  console.log(`interop ok: ${checks} checks`);
}

// Deliveries of a Subscribe stream until `count` records came (more may come in one message).
async function deliveries(stream, count) {
  const got = [];
  while (got.length < count) {
    const response = await stream.next();
    equal(response.kind, "deliveries", "Subscribe: deliveries after joined");
    check(response.deliveries.deliveries.length > 0, "Subscribe: a delivery per message", 0);
    got.push(...response.deliveries.deliveries);
  }
  equal(got.length, count, `Subscribe: ${count} deliveries`);
  return got;
}

// -- consumer groups: create, join, ack one record, nack another, see it again --------------
async function groups(client, space) {
  const group = { name: "node", space, from_end: true, max_attempts: 3 };
  const created = await unary(client, "CreateGroup", { group });
  equal([created.group.name, created.group.start, created.group.max_attempts],
    ["node", "from_end", 3], "CreateGroup: name, start, max_attempts as given");
  equal([created.group.ordering, created.group.ack_timeout.seconds, created.group.dead_letter_space,
    created.group.dead_letter_segment], ["ORDERING_PER_SEGMENT", "30", "$parked", `${space}/node`],
  "CreateGroup: the server's defaults resolved");
  await unary(client, "CreateGroup", { group });
  await expectStatus(client, "CreateGroup", { group: { ...group, max_attempts: 4 } },
    grpc.status.ALREADY_EXISTS, "CreateGroup again with other settings");
  const listed = await unary(client, "ListGroups", { space });
  equal(listed.groups.map((g) => g.name), ["node"], "ListGroups: the group");

  const unknown = reader(client.Subscribe({ deadline: Date.now() + 15_000 }));
  unknown.call.write({ join: { space, group: "no-such-group" } });
  const refused = await unknown.ended;
  equal(refused && grpc.status[refused.code], "NOT_FOUND", "Subscribe to an unknown group");

  const stream = reader(client.Subscribe({ deadline: Date.now() + 30_000 }));
  stream.call.write({ join: { space, group: "node", member_name: "node worker", max_in_flight: 10 } });
  const joined = await stream.next();
  equal(joined.kind, "joined", "Subscribe: joined first");
  check(joined.joined.member_id.length > 0, "Subscribe: a member id", joined.joined.member_id);

  // Two segments: per-segment ordering delivers both at once.
  const produced = await unary(client, "Produce", {
    space,
    writes: [
      { segment: "jobs-a", records: [{ payload: Buffer.from("job a") }] },
      { segment: "jobs-b", records: [{ payload: Buffer.from("job b") }] },
    ],
  });
  const first = await deliveries(stream, 2);
  first.sort((x, y) => Number(x.record.position) - Number(y.record.position));
  equal(first.map((d) => [text(d.record), d.record.position, d.attempt]),
    [["job a", produced.first_position, 1], ["job b", produced.last_position, 1]],
    "Subscribe: both records, first attempt");
  const info = await unary(client, "GetGroup", { space, group: "node" });
  equal(info.info.members.map((m) => [m.name, m.in_flight]), [["node worker", "2"]],
    "GetGroup: the member and its records in flight");

  stream.call.write({ ack: { positions: [first[0].record.position] } });
  stream.call.write({ nack: { positions: [first[1].record.position], action: "NACK_ACTION_RETRY",
    reason: "node says later" } });
  const [again] = await deliveries(stream, 1);
  equal([text(again.record), again.record.position, again.attempt],
    ["job b", produced.last_position, 2], "Subscribe: the nacked record again, attempt 2");
  stream.call.write({ ack: { positions: [again.record.position] } });

  // Acks take effect once durable: wait for the group's progress to show them.
  const deadline = Date.now() + 15_000;
  let progress;
  for (;;) {
    progress = (await unary(client, "GetGroup", { space, group: "node" })).info;
    if (progress.acked_through === produced.last_position || Date.now() > deadline) {
      break;
    }
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
  equal([progress.acked_through, progress.last_position, progress.in_flight],
    [produced.last_position, produced.last_position, "0"], "GetGroup: both records settled");
  stream.call.end(); // half-close: the member leaves, the stream ends OK
  equal(await stream.ended, null, "Subscribe: half-close ends the stream with OK");
}

async function entry(argv) {
  if (argv[0] === "--produce") {
    const [target, space, segment, count] = argv.slice(1);
    await produceChild(target, space, segment, Number(count));
    return;
  }
  if (argv.length !== 2) {
    console.error("usage: node interop.js TARGET SPACE");
    process.exit(2);
  }
  await main(argv[0], argv[1]);
}

entry(process.argv.slice(2)).then(
  () => process.exit(0),
  (err) => {
    if (err instanceof Mismatch) {
      console.error(`MISMATCH: ${err.message}`);
    } else {
      console.error(`FAILED: ${err && err.stack ? err.stack : err}`);
    }
    process.exit(1);
  },
);
