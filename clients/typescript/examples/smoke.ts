/**
 * Smoke test of the TypeScript client against a live edge and a live central.
 *
 *   node dist/examples/smoke.js --edge 127.0.0.1:50051 --central 127.0.0.1:8081 \
 *       [--agent-id ts-smoke] [--tenant-id default] [--publish-policy] [--flush] [--wait-ms 30000]
 *
 * Targets may also come from the environment: EDGE / CENTRAL (or AETERNA_EDGE /
 * AETERNA_CENTRAL). Steps: (central) optionally publish a Cedar policy, fetch the
 * current bundle and list the edge registry; (edge) put a session and read it
 * back, wait until the edge applied the current policy version, authorize one
 * request that the policy allows and one it does not, read the edge's status;
 * optionally flush the edge and read the session back from central.
 *
 * Prints one JSON document on stdout and exits 0 when every step succeeded and
 * every check held, 1 otherwise (the JSON then names the failed step).
 */
import { create, toJson } from "@bufbuild/protobuf";
import { timestampFromDate, timestampDate, type Timestamp } from "@bufbuild/protobuf/wkt";
import { ConnectError, Code } from "@connectrpc/connect";
import { randomUUID } from "node:crypto";
import { setTimeout as sleep } from "node:timers/promises";
import { parseArgs } from "node:util";

import {
  createCentralClient,
  createEdgeClient,
  edgev1,
  memoryv1,
  policyv1,
  syncv1,
  type ClientOptions,
} from "../src/index.js";

type Json = null | boolean | number | string | Json[] | { [key: string]: Json };

const SMOKE_POLICY_ID = "ts-smoke.cedar";
const SMOKE_POLICY = 'permit(principal == User::"ts-smoke-alice", action == Action::"approve", resource);\n';

class CheckFailed extends Error {}

function check(condition: boolean, message: string): void {
  if (!condition) {
    throw new CheckFailed(message);
  }
}

function isoTime(timestamp: Timestamp | undefined): string | null {
  return timestamp === undefined ? null : timestampDate(timestamp).toISOString();
}

/** JSON with object keys sorted, so that equal values give equal strings (Struct keys have no order). */
function canonical(value: Json): string {
  if (Array.isArray(value)) {
    return `[${value.map(canonical).join(",")}]`;
  }
  if (value !== null && typeof value === "object") {
    const keys = Object.keys(value).sort();
    return `{${keys.map((key) => `${JSON.stringify(key)}:${canonical(value[key] ?? null)}`).join(",")}}`;
  }
  return JSON.stringify(value);
}

/** The parts of a session an agent writes, as proto JSON, so that two sessions compare as strings. */
function writtenPart(session: memoryv1.Session | undefined): Json {
  if (session === undefined) {
    return null;
  }
  const projected = create(memoryv1.SessionSchema, {
    sessionId: session.sessionId,
    userId: session.userId,
    messages: session.messages.map((message) =>
      create(memoryv1.SessionMessageSchema, { role: message.role, content: message.content }),
    ),
    state: session.state,
  });
  return toJson(memoryv1.SessionSchema, projected) as Json;
}

function options(): {
  edge: string;
  central: string;
  client: ClientOptions;
  publishPolicy: boolean;
  flush: boolean;
  waitMs: number;
} {
  const { values } = parseArgs({
    options: {
      edge: { type: "string" },
      central: { type: "string" },
      "agent-id": { type: "string" },
      "tenant-id": { type: "string" },
      "publish-policy": { type: "boolean", default: false },
      flush: { type: "boolean", default: false },
      "wait-ms": { type: "string", default: "30000" },
      "no-gzip": { type: "boolean", default: false },
    },
    strict: true,
  });
  const env = process.env;
  const edge = values.edge ?? env.EDGE ?? env.AETERNA_EDGE;
  const central = values.central ?? env.CENTRAL ?? env.AETERNA_CENTRAL;
  if (!edge || !central) {
    throw new CheckFailed("give both targets: --edge HOST:PORT --central HOST:PORT (or EDGE / CENTRAL)");
  }
  const waitMs = Number(values["wait-ms"]);
  if (!Number.isFinite(waitMs) || waitMs < 0) {
    throw new CheckFailed(`--wait-ms must be a non-negative number, got ${values["wait-ms"]}`);
  }
  return {
    edge,
    central,
    client: {
      agentId: values["agent-id"] ?? env.AETERNA_AGENT_ID ?? "ts-smoke",
      tenantId: values["tenant-id"] ?? env.AETERNA_TENANT_ID ?? "default",
      gzip: !values["no-gzip"],
      // Compress every request, however small, so that the smoke exercises gzip end to end.
      compressMinBytes: 0,
    },
    publishPolicy: values["publish-policy"] ?? false,
    flush: values.flush ?? false,
    waitMs,
  };
}

async function main(summary: { [key: string]: Json }, setStep: (step: string) => void): Promise<void> {
  const opts = options();
  const edge = createEdgeClient(opts.edge, opts.client);
  const central = createCentralClient(opts.central, opts.client);
  summary.identity = { agentId: opts.client.agentId, tenantId: opts.client.tenantId ?? "default" };
  summary.gzip = opts.client.gzip ?? true;
  const centralSummary: { [key: string]: Json } = { target: opts.central };
  const edgeSummary: { [key: string]: Json } = { target: opts.edge };
  summary.central = centralSummary;
  summary.edge = edgeSummary;

  // Central: publish (optional), the current bundle, the edge registry.
  let expectedVersion = 0n;
  if (opts.publishPolicy) {
    setStep("central.PublishPolicies");
    const published = await central.policy.publishPolicies({
      policies: [{ policyId: SMOKE_POLICY_ID, text: SMOKE_POLICY }],
    });
    check(published.bundle !== undefined, "PublishPolicies returned no bundle");
    expectedVersion = published.bundle?.version ?? 0n;
    centralSummary.publishedVersion = Number(expectedVersion);
  }

  setStep("central.GetPolicyBundle");
  const current = await central.policy.getPolicyBundle({ version: 0n });
  const bundle = current.bundle;
  check(bundle !== undefined, "GetPolicyBundle returned no bundle");
  centralSummary.bundle = {
    version: Number(bundle?.version ?? 0n),
    policyIds: (bundle?.policies ?? []).map((policy) => policy.policyId),
    checksum: bundle?.checksum ?? "",
    publisher: bundle?.publisher ?? "",
  };
  if (opts.publishPolicy) {
    check(bundle?.version === expectedVersion, `current bundle is v${bundle?.version}, published v${expectedVersion}`);
  }
  expectedVersion = bundle?.version ?? 0n;

  setStep("central.ListEdges");
  const edges = await central.sync.listEdges({ pageSize: 1000 });
  centralSummary.edges = edges.edges.map((info) => ({
    agentId: info.agentId,
    region: info.region,
    tenantId: info.tenantId,
    state: syncv1.EdgeState[info.state] ?? String(info.state),
    lastSeenTime: isoTime(info.lastSeenTime),
  }));

  // Edge: a session round trip.
  setStep("edge.PutSession");
  const sessionId = `ts-smoke-${randomUUID()}`;
  const written = create(memoryv1.SessionSchema, {
    sessionId,
    userId: "user-ts-smoke",
    messages: [
      { role: "user", content: "Hello from the TypeScript client", createTime: timestampFromDate(new Date()) },
      { role: "assistant", content: "Hello, Node!", createTime: timestampFromDate(new Date()) },
    ],
    state: { language: "typescript", turn: 2, tags: ["smoke", "grpc"], nested: { ok: true } },
    lastActivityTime: timestampFromDate(new Date()),
  });
  const put = await edge.putSession({ session: written });
  check(put.session?.sessionId === sessionId, "PutSession returned a different session id");

  setStep("edge.GetSession");
  const read = await edge.getSession({ sessionId });
  const writtenJson = writtenPart(written);
  const readJson = writtenPart(read.session);
  const matches = canonical(writtenJson) === canonical(readJson);
  edgeSummary.session = {
    sessionId,
    written: writtenJson,
    read: readJson,
    source: edgev1.SessionSource[read.source] ?? String(read.source),
    checksum: read.session?.checksum ?? "",
    tenantId: read.session?.tenantId ?? "",
    matches,
  };
  check(matches, "the session read back differs from the one written");

  // Edge: wait until it applied the current bundle, then decide.
  setStep("edge.GetEdgeStatus");
  const deadline = Date.now() + opts.waitMs;
  let status = await edge.getEdgeStatus({});
  while (status.policyVersion < expectedVersion && Date.now() < deadline) {
    await sleep(200);
    status = await edge.getEdgeStatus({});
  }
  edgeSummary.status = {
    agentId: status.agentId,
    region: status.region,
    linkState: edgev1.LinkState[status.linkState] ?? String(status.linkState),
    policyVersion: Number(status.policyVersion),
    localSessions: Number(status.localSessions),
    queues: status.queues.map((queue) => ({
      channel: syncv1.SyncChannel[queue.channel] ?? String(queue.channel),
      pendingItems: Number(queue.pendingItems),
      deadLetters: Number(queue.deadLetters),
    })),
  };
  check(status.agentId !== "", "GetEdgeStatus returned no agent id");
  check(
    status.policyVersion >= expectedVersion,
    `the edge still has policy v${status.policyVersion} after ${opts.waitMs} ms; central has v${expectedVersion}`,
  );

  setStep("edge.Authorize");
  const decide = async (principal: string): Promise<{ [key: string]: Json }> => {
    const decision = await edge.authorize({
      principal,
      action: 'Action::"approve"',
      resource: 'Document::"ts-smoke-doc"',
      context: { source: "ts-smoke", mfa: true },
    });
    return {
      principal,
      effect: policyv1.Effect[decision.effect] ?? String(decision.effect),
      policyVersion: Number(decision.policyVersion),
      determiningPolicies: decision.determiningPolicies,
      errors: decision.errors,
      decisionId: decision.decisionId,
      offline: decision.offline,
    };
  };
  const allowed = await decide('User::"ts-smoke-alice"');
  const denied = await decide('User::"ts-smoke-mallory"');
  edgeSummary.authorize = { allowed, denied };
  check(allowed.decisionId !== "" && denied.decisionId !== "", "Authorize returned no decision id");
  check(allowed.effect === "ALLOW" || allowed.effect === "DENY", `Authorize returned effect ${allowed.effect}`);
  if (opts.publishPolicy) {
    check(allowed.effect === "ALLOW", `the smoke policy should allow ts-smoke-alice, got ${allowed.effect}`);
    check(denied.effect === "DENY", `the smoke policy should deny ts-smoke-mallory, got ${denied.effect}`);
    check(allowed.policyVersion === Number(expectedVersion), `decided with v${allowed.policyVersion}`);
  }

  // Optional: push the session to central now and read it there.
  if (opts.flush) {
    setStep("edge.FlushSync");
    const flushed = await edge.flushSync({});
    edgeSummary.flush = {
      batchesAcked: flushed.batchesAcked,
      itemsAcked: flushed.itemsAcked,
      itemsPending: Number(flushed.itemsPending),
    };
    setStep("central.GetSession");
    const atCentral = await central.sync.getSession({ sessionId });
    const centralJson = writtenPart(atCentral.session);
    centralSummary.session = {
      sessionId,
      read: centralJson,
      agentId: atCentral.agentId,
      syncTime: isoTime(atCentral.syncTime),
      matches: canonical(centralJson) === canonical(writtenJson),
    };
    check(canonical(centralJson) === canonical(writtenJson), "central's copy differs from the written one");
  }
}

function describeError(error: unknown): { [key: string]: Json } {
  if (error instanceof ConnectError) {
    return { kind: "rpc", code: Code[error.code] ?? String(error.code), message: error.rawMessage };
  }
  if (error instanceof CheckFailed) {
    return { kind: "check", message: error.message };
  }
  return { kind: "exception", message: error instanceof Error ? (error.stack ?? error.message) : String(error) };
}

const summary: { [key: string]: Json } = { ok: false, step: "start" };
try {
  await main(summary, (step) => {
    summary.step = step;
  });
  summary.ok = true;
  summary.step = "done";
} catch (error) {
  summary.error = describeError(error);
}
process.stdout.write(JSON.stringify(summary, null, 2) + "\n");
// The HTTP/2 sessions would keep the event loop alive for a while; the answer is printed.
process.exit(summary.ok ? 0 : 1);
