package aeterna.smoke;

import aeterna.edge.v1.Edge;
import aeterna.edge.v1.EdgeServiceGrpc;
import aeterna.memory.v1.Memory;
import aeterna.policy.v1.Policy;
import aeterna.policy.v1.PolicyServiceGrpc;
import com.google.gson.Gson;
import com.google.protobuf.Any;
import com.google.protobuf.InvalidProtocolBufferException;
import com.google.protobuf.Struct;
import com.google.protobuf.Value;
import com.google.rpc.ErrorInfo;
import io.grpc.Context;
import io.grpc.ManagedChannel;
import io.grpc.ManagedChannelBuilder;
import io.grpc.Metadata;
import io.grpc.Status;
import io.grpc.StatusRuntimeException;
import io.grpc.health.v1.HealthCheckRequest;
import io.grpc.health.v1.HealthCheckResponse;
import io.grpc.health.v1.HealthGrpc;
import io.grpc.protobuf.StatusProto;
import io.grpc.stub.MetadataUtils;
import java.io.IOException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.Iterator;
import java.util.List;
import java.util.Map;
import java.util.concurrent.TimeUnit;

/**
 * Exercises a live edge and central from Java: health, a policy watch (server stream), a session
 * round trip, an authorization and a failing call whose google.rpc.ErrorInfo it reads back.
 *
 * <p>Prints one line per step ("OK step key=value ...", or "FAIL step: why") and exits 1 on the
 * first unexpected result. Built against Debian 12's grpc-java 1.41.
 *
 * <pre>
 * java -cp ... aeterna.smoke.Smoke --edge 127.0.0.1:50051 --central 127.0.0.1:8081 \
 *     --agent-id java-smoke --tenant-id default [--publish-policy] [--service-config FILE]
 * </pre>
 */
public final class Smoke {
  /** Allows exactly one principal; --publish-policy publishes it. */
  static final String SMOKE_POLICY =
      "permit(principal == User::\"java-smoke-alice\", action == Action::\"approve\", resource);";

  /** The step running now, named in the FAIL line when a call throws. */
  static String step = "start";

  private Smoke() {}

  static void ok(String step, String details) {
    System.out.println(("OK " + step + " " + details).strip());
  }

  static void fail(String step, String why) {
    System.out.println("FAIL " + step + ": " + why);
    System.exit(1);
  }

  static String env(String name, String fallback) {
    String value = System.getenv(name);
    return value == null || value.isEmpty() ? fallback : value;
  }

  /** One line: the code and the server's message (Status.toString() adds the cause's stack). */
  static String describe(Status status) {
    return status.getCode() + ": " + status.getDescription();
  }

  static Value text(String s) {
    return Value.newBuilder().setStringValue(s).build();
  }

  // --8<-- [start:channel]
  /**
   * A plaintext (h2c) channel with the project's service config (retries of idempotent RPCs,
   * per-method timeouts); useTransportSecurity() and a trust store for TLS.
   */
  static ManagedChannel channel(String target, Map<String, ?> serviceConfig) {
    ManagedChannelBuilder<?> builder = ManagedChannelBuilder.forTarget(target).usePlaintext();
    if (serviceConfig != null) {
      builder.defaultServiceConfig(serviceConfig).enableRetry();
    }
    return builder.build();
  }

  /** aeterna_client/service_config.json parsed by Gson (numbers as Double, as grpc-java wants). */
  @SuppressWarnings("unchecked")
  static Map<String, ?> serviceConfig(String path) throws IOException {
    return path.isEmpty() ? null : new Gson().fromJson(Files.readString(Path.of(path)), Map.class);
  }

  /** Development auth (auth.method: none): the identity travels as metadata on every call. */
  static Metadata identity(String agentId, String tenantId) {
    Metadata headers = new Metadata();
    headers.put(Metadata.Key.of("x-aeterna-agent-id", Metadata.ASCII_STRING_MARSHALLER), agentId);
    headers.put(Metadata.Key.of("x-aeterna-tenant-id", Metadata.ASCII_STRING_MARSHALLER), tenantId);
    return headers;
  }
  // --8<-- [end:channel]

  public static void main(String[] args) throws Exception {
    String edgeTarget = env("AETERNA_EDGE", "127.0.0.1:50051");
    String centralTarget = env("AETERNA_CENTRAL", "127.0.0.1:8081");
    String agentId = env("AETERNA_AGENT_ID", "java-smoke");
    String tenantId = env("AETERNA_TENANT_ID", "default");
    String serviceConfigPath = env("AETERNA_SERVICE_CONFIG", "aeterna_client/service_config.json");
    boolean publish = false;
    long waitMillis = 30_000;
    for (int i = 0; i < args.length; i++) {
      switch (args[i]) {
        case "--edge" -> edgeTarget = args[++i];
        case "--central" -> centralTarget = args[++i];
        case "--agent-id" -> agentId = args[++i];
        case "--tenant-id" -> tenantId = args[++i];
        case "--publish-policy" -> publish = true;
        case "--wait-ms" -> waitMillis = Long.parseLong(args[++i]);
        case "--service-config" -> serviceConfigPath = args[++i];
        default -> fail("args", "unknown argument " + args[i]);
      }
    }

    Map<String, ?> serviceConfig = null;
    try {
      serviceConfig = serviceConfig(serviceConfigPath);
    } catch (IOException e) {
      fail("service-config", e + " (--service-config FILE, or --service-config '' for none)");
    }
    ManagedChannel edgeChannel = channel(edgeTarget, serviceConfig);
    ManagedChannel centralChannel = channel(centralTarget, serviceConfig);
    try {
      run(edgeChannel, centralChannel, identity(agentId, tenantId), publish, waitMillis);
    } catch (StatusRuntimeException e) {
      fail(step, describe(e.getStatus()));
    } finally {
      edgeChannel.shutdownNow();
      centralChannel.shutdownNow();
    }
    System.out.println("OK done");
  }

  static void run(
      ManagedChannel edgeChannel,
      ManagedChannel centralChannel,
      Metadata headers,
      boolean publish,
      long waitMillis)
      throws InvalidProtocolBufferException, InterruptedException {
    // --8<-- [start:stubs]
    EdgeServiceGrpc.EdgeServiceBlockingStub edge =
        EdgeServiceGrpc.newBlockingStub(edgeChannel)
            .withInterceptors(MetadataUtils.newAttachHeadersInterceptor(headers))
            .withCompression("gzip");
    PolicyServiceGrpc.PolicyServiceBlockingStub policy =
        PolicyServiceGrpc.newBlockingStub(centralChannel)
            .withInterceptors(MetadataUtils.newAttachHeadersInterceptor(headers))
            .withCompression("gzip");
    // --8<-- [end:stubs]

    step = "health";
    // 1. grpc.health.v1: the overall status of both servers (no credentials needed).
    List<String> states = new ArrayList<>();
    for (ManagedChannel channel : List.of(edgeChannel, centralChannel)) {
      HealthCheckResponse.ServingStatus state;
      try {
        state =
            HealthGrpc.newBlockingStub(channel)
                .withDeadlineAfter(10, TimeUnit.SECONDS)
                .check(HealthCheckRequest.getDefaultInstance())
                .getStatus();
      } catch (StatusRuntimeException e) {
        fail("health", channel.authority() + ": " + describe(e.getStatus()));
        return;
      }
      if (state != HealthCheckResponse.ServingStatus.SERVING) {
        fail("health", channel.authority() + ": " + state);
      }
      states.add(state.name());
    }
    ok("health", "edge=" + states.get(0) + " central=" + states.get(1));

    step = "publish";
    // 2. Optionally publish a bundle, so that the watch and the decisions below are known.
    long published = 0;
    if (publish) {
      Policy.PublishPoliciesResponse response =
          policy
              .withDeadlineAfter(10, TimeUnit.SECONDS)
              .publishPolicies(
                  Policy.PublishPoliciesRequest.newBuilder()
                      .addPolicies(
                          Policy.CedarPolicy.newBuilder()
                              .setPolicyId("java-smoke.cedar")
                              .setText(SMOKE_POLICY))
                      .build());
      published = response.getBundle().getVersion();
      ok("publish", "version=" + published);
    }

    step = "watch";
    // --8<-- [start:watch]
    // 3. WatchPolicies (server stream): the first message is central's current bundle; then cancel.
    Context.CancellableContext watch = Context.current().withCancellation();
    Iterator<Policy.WatchPoliciesResponse> stream;
    Context previous = watch.attach(); // the call started here is cancelled with `watch`
    try {
      stream =
          policy
              .withDeadlineAfter(10, TimeUnit.SECONDS) // no bundle yet: DEADLINE_EXCEEDED
              .watchPolicies(Policy.WatchPoliciesRequest.newBuilder().setKnownVersion(0).build());
    } finally {
      watch.detach(previous);
    }
    if (!stream.hasNext()) {
      fail("watch", "the stream ended without a bundle");
    }
    Policy.PolicyBundle bundle = stream.next().getBundle();
    watch.cancel(null);
    try {
      stream.hasNext();
      fail("watch", "the stream went on after the cancel");
    } catch (StatusRuntimeException e) {
      if (e.getStatus().getCode() != Status.Code.CANCELLED) {
        fail("watch", "after cancel: " + describe(e.getStatus()));
      }
    }
    List<String> ids = new ArrayList<>();
    bundle.getPoliciesList().forEach(p -> ids.add(p.getPolicyId()));
    ok("watch", "version=" + bundle.getVersion() + " policies=" + String.join(",", ids));
    // --8<-- [end:watch]
    if (publish && bundle.getVersion() != published) {
      fail("watch", "first bundle is v" + bundle.getVersion() + ", published v" + published);
    }

    step = "edge-status";
    // 4. Wait until the edge is online and applied central's bundle.
    long deadline = System.currentTimeMillis() + waitMillis;
    while (true) {
      Edge.GetEdgeStatusResponse status =
          edge.withDeadlineAfter(10, TimeUnit.SECONDS)
              .getEdgeStatus(Edge.GetEdgeStatusRequest.getDefaultInstance());
      if (status.getLinkState() == Edge.LinkState.LINK_STATE_ONLINE
          && status.getPolicyVersion() >= bundle.getVersion()) {
        ok(
            "edge-status",
            "link=" + status.getLinkState().name() + " policy_version=" + status.getPolicyVersion());
        break;
      }
      if (System.currentTimeMillis() > deadline) {
        fail(
            "edge-status",
            "link="
                + status.getLinkState().name()
                + " policy_version="
                + status.getPolicyVersion()
                + ", central has v"
                + bundle.getVersion());
      }
      Thread.sleep(200);
    }

    step = "put-session";
    // 5. PutSession, then GetSession at the edge.
    String sessionId = "java-smoke-" + System.nanoTime();
    Memory.Session written =
        edge.withDeadlineAfter(10, TimeUnit.SECONDS)
            .putSession(
                Edge.PutSessionRequest.newBuilder()
                    .setSession(
                        Memory.Session.newBuilder()
                            .setSessionId(sessionId)
                            .setUserId("user-java")
                            .addMessages(
                                Memory.SessionMessage.newBuilder()
                                    .setRole("user")
                                    .setContent("Hello from the Java client"))
                            .addMessages(
                                Memory.SessionMessage.newBuilder()
                                    .setRole("assistant")
                                    .setContent("Hello, Java!"))
                            .setState(
                                Struct.newBuilder()
                                    .putFields("language", text("java"))
                                    .putFields("turn", Value.newBuilder().setNumberValue(2).build())))
                    .build())
            .getSession();
    ok("put-session", "id=" + written.getSessionId() + " checksum=" + written.getChecksum());

    step = "get-session";
    Edge.GetSessionResponse got =
        edge.withDeadlineAfter(10, TimeUnit.SECONDS)
            .getSession(Edge.GetSessionRequest.newBuilder().setSessionId(sessionId).build());
    Memory.Session read = got.getSession();
    if (!read.getChecksum().equals(written.getChecksum())
        || read.getMessagesCount() != 2
        || !read.getMessages(1).getContent().equals("Hello, Java!")
        || !read.getState().getFieldsOrThrow("language").getStringValue().equals("java")) {
      fail("get-session", "read back " + read + ", wrote " + written);
    }
    ok(
        "get-session",
        "id="
            + read.getSessionId()
            + " source="
            + got.getSource().name()
            + " messages="
            + read.getMessagesCount()
            + " tenant="
            + read.getTenantId());

    step = "authorize";
    // 6. Authorize at the edge: one request the smoke policy allows, one it does not.
    List<String> effects = new ArrayList<>();
    long decided = 0;
    for (String principal : List.of("User::\"java-smoke-alice\"", "User::\"java-smoke-mallory\"")) {
      Edge.AuthorizeResponse decision =
          edge.withDeadlineAfter(10, TimeUnit.SECONDS)
              .authorize(
                  Edge.AuthorizeRequest.newBuilder()
                      .setPrincipal(principal)
                      .setAction("Action::\"approve\"")
                      .setResource("Document::\"doc-1\"")
                      .setContext(
                          Struct.newBuilder()
                              .putAllFields(
                                  Map.of(
                                      "channel", text("java"),
                                      "mfa", Value.newBuilder().setBoolValue(true).build())))
                      .build());
      effects.add(decision.getEffect().name().replaceFirst("^EFFECT_", ""));
      decided = decision.getPolicyVersion();
    }
    if (publish
        && !(effects.equals(List.of("ALLOW", "DENY")) && decided == published)) {
      fail("authorize", "effects " + effects + " at v" + decided + ", want [ALLOW, DENY] at v" + published);
    }
    ok(
        "authorize",
        "allow=" + effects.get(0) + " deny=" + effects.get(1) + " policy_version=" + decided);

    step = "error-info";
    // --8<-- [start:error-info]
    // 7. A call that fails: the status carries a google.rpc.ErrorInfo (reason, domain).
    try {
      edge.withDeadlineAfter(10, TimeUnit.SECONDS)
          .getSession(
              Edge.GetSessionRequest.newBuilder().setSessionId(sessionId + "-missing").build());
      fail("error-info", "GetSession of a missing session succeeded");
    } catch (StatusRuntimeException e) {
      com.google.rpc.Status status = StatusProto.fromThrowable(e);
      if (e.getStatus().getCode() != Status.Code.NOT_FOUND || status == null) {
        fail("error-info", "want NOT_FOUND with details, got " + describe(e.getStatus()));
        return;
      }
      ErrorInfo info = null;
      for (Any detail : status.getDetailsList()) {
        if (detail.is(ErrorInfo.class)) {
          info = detail.unpack(ErrorInfo.class);
        }
      }
      if (info == null || info.getReason().isEmpty()) {
        fail("error-info", "no google.rpc.ErrorInfo in the status details: " + status);
        return;
      }
      ok(
          "error-info",
          "code=" + e.getStatus().getCode().name()
              + " reason=" + info.getReason()
              + " domain=" + info.getDomain());
    }
    // --8<-- [end:error-info]
  }
}
