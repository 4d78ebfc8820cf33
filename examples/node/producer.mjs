#!/usr/bin/env node
// A Node producer for lovense-worker: what a platform's Node backend does to drive a toy.
//
//   1. validate each command locally against the shipped JSON Schema (ajv, draft 2020-12);
//   2. publish it with every property and header of the README's producers' table,
//      on a confirm channel, and treat it as sent once RabbitMQ confirms it;
//   3. wait for its result on a private reply queue (reply_to + correlation_id);
//   4. watch `invalid.#` on the results exchange, as an alerting consumer would;
//   5. stop the toys through the Stop lane (exchange lovense.stop).
//
// It prints one JSON line per event and a final summary line; it exits 0 when every
// result came back with the status it expected, 1 otherwise.
//
// Settings (environment):
//   LOVENSE_AMQP_URL    the broker (default amqp://guest:guest@localhost:5672/)
//   LOVENSE_UID         the user to drive (default sim-user-1, the user `make run` pairs)
//   LOVENSE_SCHEMA_DIR  where command.schema.json is (default: the repository's schemas/)
//   LOVENSE_TIMEOUT_MS  how long to wait for each result (default 10000)
import { createHash, randomUUID } from "node:crypto";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import amqp from "amqplib";
import Ajv2020 from "ajv/dist/2020.js";

const AMQP_URL = process.env.LOVENSE_AMQP_URL || "amqp://guest:guest@localhost:5672/";
const UID = process.env.LOVENSE_UID || "sim-user-1";
const TIMEOUT_MS = Number(process.env.LOVENSE_TIMEOUT_MS || 10_000);
const SCHEMA_DIR =
  process.env.LOVENSE_SCHEMA_DIR || fileURLToPath(new URL("../../schemas/", import.meta.url));

// The contract's names (README, "Topology"). The worker declares them at start-up.
const COMMANDS = "lovense.commands"; // x-consistent-hash: routing key = the uid
const STOP_LANE = "lovense.stop"; // fanout: Stops never wait behind other commands
const RESULTS = "lovense.results"; // topic: routing key <status>.<command>

const emit = (event) => console.log(JSON.stringify(event));

// --- Local validation: refuse to publish what the worker would refuse anyway. ----------
// Default options are strict: a schema ajv does not fully understand throws here.
const ajv = new Ajv2020();
const schema = JSON.parse(readFileSync(join(SCHEMA_DIR, "command.schema.json"), "utf8"));
const validateCommand = ajv.compile(schema);

// --- Results arrive on consumers; callers await them by correlation id. -----------------
// A result can arrive before anyone awaits it, so arrivals are kept until taken.
class Inbox {
  #arrived = new Map();
  #waiting = new Map();

  deliver(correlationId, result) {
    const waiter = this.#waiting.get(correlationId);
    if (waiter) waiter(result);
    else this.#arrived.set(correlationId, result);
  }

  take(correlationId, timeoutMs = TIMEOUT_MS) {
    if (this.#arrived.has(correlationId)) {
      const result = this.#arrived.get(correlationId);
      this.#arrived.delete(correlationId);
      return Promise.resolve(result);
    }
    return new Promise((resolve) => {
      const timer = setTimeout(() => {
        this.#waiting.delete(correlationId);
        resolve(null); // no result in time
      }, timeoutMs);
      this.#waiting.set(correlationId, (result) => {
        clearTimeout(timer);
        this.#waiting.delete(correlationId);
        resolve(result);
      });
    });
  }
}

// A Stop is `Stop`, or a Function whose action is `Stop`: both take the Stop lane.
const isStop = (command) =>
  command.command === "Stop" ||
  (command.command === "Function" && typeof command.action === "string" &&
    command.action.trim() === "Stop");

// A routing key is an AMQP short string (255 bytes at most): a longer uid becomes its SHA-256.
function routingKeyFor(command, messageId) {
  const key = typeof command.uid === "string" && command.uid ? command.uid : messageId;
  if (Buffer.byteLength(key, "utf8") <= 255) return key;
  return createHash("sha256").update(key, "utf8").digest("hex");
}

async function main() {
  const connection = await amqp.connect(AMQP_URL, {
    clientProperties: { connection_name: "lovense-node-producer" },
  });
  // amqplib also emits errors as events (a channel the broker closes, a lost connection);
  // without listeners Node would crash on them instead of letting the awaiting call reject.
  connection.on("error", (error) => console.error(`connection error: ${error.message}`));
  try {
    // A confirm channel: every publish is acknowledged by the broker once it holds the message.
    const channel = await connection.createConfirmChannel();
    channel.on("error", (error) => console.error(`channel error: ${error.message}`));
    for (const exchange of [COMMANDS, STOP_LANE, RESULTS]) {
      await channel.checkExchange(exchange).catch((error) => {
        throw new Error(`exchange ${exchange} is missing: start the worker first (${error.message})`);
      });
    }

    // Our reply queue: server-named, exclusive, gone when we disconnect. The worker publishes
    // each result to the default exchange with routing key = our reply_to.
    const replies = new Inbox();
    const { queue: replyTo } = await channel.assertQueue("", { exclusive: true, autoDelete: true });
    await channel.consume(replyTo, (msg) => {
      if (msg) replies.deliver(msg.properties.correlationId, JSON.parse(msg.content.toString("utf8")));
    }, { noAck: true });

    // Every invalid result of every producer: what an alerting consumer binds. We report ours.
    const sent = new Set();
    const invalids = new Inbox();
    const { queue: invalidQueue } = await channel.assertQueue("", { exclusive: true, autoDelete: true });
    await channel.bindQueue(invalidQueue, RESULTS, "invalid.#");
    await channel.consume(invalidQueue, (msg) => {
      if (!msg || !sent.has(msg.properties.correlationId)) return; // cancelled, or not ours
      const result = JSON.parse(msg.content.toString("utf8"));
      invalids.deliver(msg.properties.correlationId, { ...result, routingKey: msg.fields.routingKey });
    }, { noAck: true });

    // Publish one command; return its id once RabbitMQ confirmed it, or null when refused locally.
    // `skipValidation` exists for this demo only: a real producer never publishes what ajv refuses.
    async function publish(command, { skipValidation = false } = {}) {
      const id = command.id ?? randomUUID();
      if (!skipValidation && !validateCommand(command)) {
        console.error(`refused locally, not published: ${ajv.errorsText(validateCommand.errors)}`);
        emit({ event: "refused", id, command: command.command, errors: validateCommand.errors });
        return null;
      }
      const stop = isStop(command);
      const exchange = stop ? STOP_LANE : COMMANDS;
      const routingKey = stop ? "" : routingKeyFor(command, id); // the Stop lane is a fanout
      sent.add(id);
      channel.publish(exchange, routingKey, Buffer.from(JSON.stringify(command)), {
        contentType: "application/json",
        deliveryMode: 2, // persistent: a command is work that must not vanish at a broker restart
        messageId: id, // the command's identity: a redelivery is recognised by it
        replyTo,
        correlationId: id,
        headers: {
          // The publish time, as AMQP signed 64-bit (field type `l`). amqplib would guess `l` for
          // Date.now() too (an integer beyond 32 bits), but the explicit type states the contract
          // and stays `l` if the value ever comes from a clock with a fraction (that would be a `d`).
          "x-lovense-published-ms": { "!": "long", value: Date.now() },
        },
        // Never `expiration`: the broker would drop the message without a result. Use ttlMs.
      });
      await channel.waitForConfirms(); // rejects if the broker nacks: then it was not sent
      emit({ event: "published", id, command: command.command, exchange });
      return id;
    }

    // Wait for a result on reply_to (or on the invalid.# listener) and check its status.
    const outcomes = [];
    async function expect(inbox, source, id, wanted) {
      const result = id === null ? null : await inbox.take(id);
      const status = result?.status ?? (id === null ? "not published" : "timeout");
      emit({
        event: "result", source, correlationId: id, status,
        command: result?.command ?? null, via: result?.via ?? null,
        message: result?.message ?? `no result within ${TIMEOUT_MS} ms`,
        ...(result?.routingKey ? { routingKey: result.routingKey } : {}),
      });
      outcomes.push({ source, id, wanted, status, ok: status === wanted });
    }

    // 1. A valid command, with a deadline 2 s after x-lovense-published-ms: it comes back ok.
    const vibrate = { command: "Function", uid: UID, action: "Vibrate:5", timeSec: 3, ttlMs: 2000 };
    await expect(replies, "reply_to", await publish(vibrate), "ok");

    // 2. An invalid command (level 25 is out of range 0–20): ajv refuses it, nothing is sent...
    const tooStrong = { command: "Function", uid: UID, action: "Vibrate:25", timeSec: 3 };
    const refused = (await publish(tooStrong)) === null;
    const status = refused ? "refused" : "published";
    outcomes.push({ source: "ajv", wanted: "refused", status, ok: refused });

    // ...and published anyway (demo only): the worker answers `invalid`, on reply_to and invalid.#.
    const invalidId = await publish(tooStrong, { skipValidation: true });
    await expect(replies, "reply_to", invalidId, "invalid");
    await expect(invalids, "invalid.#", invalidId, "invalid");

    // 3. A Stop, through the Stop lane: every toy of the user stops.
    await expect(replies, "reply_to", await publish({ command: "Stop", uid: UID }), "ok");

    const failed = outcomes.filter((outcome) => !outcome.ok);
    const matched = outcomes.length - failed.length;
    emit({ event: "summary", ok: failed.length === 0, expected: outcomes.length, matched });
    for (const { source, id, wanted, status } of failed) {
      console.error(`unexpected: ${source} ${id ?? ""} came back ${status}, expected ${wanted}`);
    }
    return failed.length === 0 ? 0 : 1;
  } finally {
    await connection.close().catch(() => {}); // already closed if the broker closed it
  }
}

main().then(
  (code) => { process.exitCode = code; },
  (error) => {
    console.error(`producer failed: ${error.message}`);
    process.exitCode = 1;
  },
);
