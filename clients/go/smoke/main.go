// Command aeterna-go-smoke exercises a live edge and central from Go: health,
// a policy watch (server stream), a session round trip, an authorization and
// a failing call whose google.rpc.ErrorInfo it reads back.
//
// It prints one line per step ("OK <step> key=value ...", or "FAIL <step>: why")
// and exits 1 on the first unexpected result. Built against Debian 12's
// grpc-go 1.33 (grpc.Dial + grpc.WithInsecure; no grpc.NewClient there).
//
// Both connections use the project's published service config
// (aeterna_client/service_config.json: retries of idempotent RPCs, per-method
// timeouts). grpc-go 1.33 applies its timeouts always and its retries only with
// GRPC_GO_RETRY=on in the environment (grpc-go 1.40 and later retry by default).
//
//	aeterna-go-smoke -edge 127.0.0.1:50051 -central 127.0.0.1:8081 \
//	    -agent-id go-smoke -tenant-id default [-publish-policy] [-service-config FILE]
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/encoding/gzip"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/structpb"

	edgev1 "aeterna.dev/gen/aeterna/edge/v1"
	memoryv1 "aeterna.dev/gen/aeterna/memory/v1"
	policyv1 "aeterna.dev/gen/aeterna/policy/v1"
)

// smokePolicy allows exactly one principal; -publish-policy publishes it.
const smokePolicy = `permit(principal == User::"go-smoke-alice", action == Action::"approve", resource);`

func env(name, fallback string) string {
	if value := os.Getenv(name); value != "" {
		return value
	}
	return fallback
}

func ok(step string, format string, args ...any) {
	fmt.Printf("OK %s %s\n", step, fmt.Sprintf(format, args...))
}

func fail(step string, format string, args ...any) {
	fmt.Printf("FAIL %s: %s\n", step, fmt.Sprintf(format, args...))
	os.Exit(1)
}

// upperSnake turns a code name such as "NotFound" into the gRPC spelling "NOT_FOUND".
func upperSnake(name string) string {
	var out strings.Builder
	for i, r := range name {
		if i > 0 && r >= 'A' && r <= 'Z' {
			out.WriteByte('_')
		}
		out.WriteRune(r)
	}
	return strings.ToUpper(out.String())
}

// --8<-- [start:dial]
// dial opens a plaintext (h2c) connection that gzips requests and follows the service config
// (a JSON document; "" for none).
func dial(target string, serviceConfig string) *grpc.ClientConn {
	options := []grpc.DialOption{
		grpc.WithInsecure(), // plaintext h2c; grpc.WithTransportCredentials(credentials.NewTLS(...)) for TLS
		grpc.WithDefaultCallOptions(grpc.UseCompressor(gzip.Name)),
	}
	if serviceConfig != "" {
		options = append(options, grpc.WithDefaultServiceConfig(serviceConfig))
	}
	conn, err := grpc.Dial(target, options...)
	if err != nil {
		fail("dial", "%s: %v", target, err)
	}
	return conn
}

// --8<-- [end:dial]

// --8<-- [start:service-config]
// loadServiceConfig reads the project's service config (aeterna_client/service_config.json).
func loadServiceConfig(path string) string {
	if path == "" {
		return ""
	}
	data, err := os.ReadFile(path)
	if err != nil {
		fail("service-config", "%v (-service-config FILE, or -service-config '' for none)", err)
	}
	return string(data)
}

// --8<-- [end:service-config]

func main() {
	edgeTarget := flag.String("edge", env("AETERNA_EDGE", "127.0.0.1:50051"), "edge address (env AETERNA_EDGE)")
	centralTarget := flag.String("central", env("AETERNA_CENTRAL", "127.0.0.1:8081"), "central address (env AETERNA_CENTRAL)")
	agentID := flag.String("agent-id", env("AETERNA_AGENT_ID", "go-smoke"), "x-aeterna-agent-id")
	tenantID := flag.String("tenant-id", env("AETERNA_TENANT_ID", "default"), "x-aeterna-tenant-id")
	publish := flag.Bool("publish-policy", false, "publish a one-line test policy at central first (not against production)")
	wait := flag.Duration("wait", 30*time.Second, "how long to wait for the edge to be online with central's policy version")
	configPath := flag.String("service-config", env("AETERNA_SERVICE_CONFIG", "aeterna_client/service_config.json"),
		"the gRPC service config to dial with, '' for none (env AETERNA_SERVICE_CONFIG)")
	flag.Parse()

	serviceConfig := loadServiceConfig(*configPath)
	edgeConn, centralConn := dial(*edgeTarget, serviceConfig), dial(*centralTarget, serviceConfig)
	defer edgeConn.Close()
	defer centralConn.Close()
	edge := edgev1.NewEdgeServiceClient(edgeConn)
	policy := policyv1.NewPolicyServiceClient(centralConn)

	// --8<-- [start:metadata]
	// Development auth (auth.method: none): the identity travels as metadata.
	base, cancelAll := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancelAll()
	ctx := metadata.AppendToOutgoingContext(base,
		"x-aeterna-agent-id", *agentID,
		"x-aeterna-tenant-id", *tenantID)
	call := func() (context.Context, context.CancelFunc) { return context.WithTimeout(ctx, 10*time.Second) }
	// --8<-- [end:metadata]

	// 1. grpc.health.v1: the overall status of both servers (no credentials needed).
	states := []string{}
	for _, conn := range []*grpc.ClientConn{edgeConn, centralConn} {
		c, cancel := call()
		health, err := healthpb.NewHealthClient(conn).Check(c, &healthpb.HealthCheckRequest{})
		cancel()
		if err != nil || health.GetStatus() != healthpb.HealthCheckResponse_SERVING {
			fail("health", "%s: %v %v", conn.Target(), health.GetStatus(), err)
		}
		states = append(states, health.GetStatus().String())
	}
	ok("health", "edge=%s central=%s", states[0], states[1])

	// 2. Optionally publish a bundle, so that the watch and the decisions below are known.
	var published uint64
	if *publish {
		c, cancel := call()
		response, err := policy.PublishPolicies(c, &policyv1.PublishPoliciesRequest{
			Policies: []*policyv1.CedarPolicy{{PolicyId: "go-smoke.cedar", Text: smokePolicy}},
		})
		cancel()
		if err != nil {
			fail("publish", "%v", err)
		}
		published = response.GetBundle().GetVersion()
		ok("publish", "version=%d", published)
	}

	// --8<-- [start:watch]
	// 3. WatchPolicies (server stream): the first message is central's current bundle; then cancel.
	watchCtx, stopWatch := context.WithTimeout(ctx, 10*time.Second) // no bundle yet: DEADLINE_EXCEEDED
	stream, err := policy.WatchPolicies(watchCtx, &policyv1.WatchPoliciesRequest{KnownVersion: 0})
	if err != nil {
		fail("watch", "%v", err)
	}
	first, err := stream.Recv()
	if err != nil {
		fail("watch", "no first bundle (has central a published policy? use -publish-policy): %v", err)
	}
	bundle := first.GetBundle()
	if *publish && bundle.GetVersion() != published {
		fail("watch", "first bundle is v%d, published v%d", bundle.GetVersion(), published)
	}
	ids := []string{}
	for _, p := range bundle.GetPolicies() {
		ids = append(ids, p.GetPolicyId())
	}
	stopWatch()
	if _, err := stream.Recv(); status.Code(err) != codes.Canceled && !errors.Is(err, io.EOF) {
		fail("watch", "after cancel: %v", err)
	}
	ok("watch", "version=%d policies=%s", bundle.GetVersion(), strings.Join(ids, ","))
	// --8<-- [end:watch]

	// 4. Wait until the edge is online and applied central's bundle.
	deadline := time.Now().Add(*wait)
	for {
		c, cancel := call()
		edgeStatus, err := edge.GetEdgeStatus(c, &edgev1.GetEdgeStatusRequest{})
		cancel()
		if err != nil {
			fail("edge-status", "%v", err)
		}
		if edgeStatus.GetLinkState() == edgev1.LinkState_LINK_STATE_ONLINE && edgeStatus.GetPolicyVersion() >= bundle.GetVersion() {
			ok("edge-status", "link=%s policy_version=%d", edgeStatus.GetLinkState(), edgeStatus.GetPolicyVersion())
			break
		}
		if time.Now().After(deadline) {
			fail("edge-status", "after %s: link=%s policy_version=%d, central has v%d",
				*wait, edgeStatus.GetLinkState(), edgeStatus.GetPolicyVersion(), bundle.GetVersion())
		}
		time.Sleep(200 * time.Millisecond)
	}

	// 5. PutSession, then GetSession at the edge.
	sessionID := fmt.Sprintf("go-smoke-%d", time.Now().UnixNano())
	state, _ := structpb.NewStruct(map[string]any{"language": "go", "turn": 2})
	c, cancel := call()
	put, err := edge.PutSession(c, &edgev1.PutSessionRequest{Session: &memoryv1.Session{
		SessionId: sessionID,
		UserId:    "user-go",
		Messages: []*memoryv1.SessionMessage{
			{Role: "user", Content: "Hello from the Go client"},
			{Role: "assistant", Content: "Hello, Go!"},
		},
		State: state,
	}})
	cancel()
	if err != nil {
		fail("put-session", "%v", err)
	}
	ok("put-session", "id=%s checksum=%s", put.GetSession().GetSessionId(), put.GetSession().GetChecksum())

	c, cancel = call()
	got, err := edge.GetSession(c, &edgev1.GetSessionRequest{SessionId: sessionID})
	cancel()
	if err != nil {
		fail("get-session", "%v", err)
	}
	read := got.GetSession()
	if read.GetChecksum() != put.GetSession().GetChecksum() || len(read.GetMessages()) != 2 ||
		read.GetMessages()[1].GetContent() != "Hello, Go!" || read.GetState().GetFields()["language"].GetStringValue() != "go" {
		fail("get-session", "read back %v, wrote %v", read, put.GetSession())
	}
	ok("get-session", "id=%s source=%s messages=%d tenant=%s", read.GetSessionId(), got.GetSource(),
		len(read.GetMessages()), read.GetTenantId())

	// 6. Authorize at the edge: one request the smoke policy allows, one it does not.
	effects := []string{}
	var decided uint64
	for _, principal := range []string{`User::"go-smoke-alice"`, `User::"go-smoke-mallory"`} {
		request, _ := structpb.NewStruct(map[string]any{"channel": "go", "mfa": true})
		c, cancel := call()
		decision, err := edge.Authorize(c, &edgev1.AuthorizeRequest{
			Principal: principal,
			Action:    `Action::"approve"`,
			Resource:  `Document::"doc-1"`,
			Context:   request,
		})
		cancel()
		if err != nil {
			fail("authorize", "%s: %v", principal, err)
		}
		effects = append(effects, strings.TrimPrefix(decision.GetEffect().String(), "EFFECT_"))
		decided = decision.GetPolicyVersion()
	}
	if *publish && (effects[0] != "ALLOW" || effects[1] != "DENY" || decided != published) {
		fail("authorize", "effects %v at v%d, want [ALLOW DENY] at v%d", effects, decided, published)
	}
	ok("authorize", "allow=%s deny=%s policy_version=%d", effects[0], effects[1], decided)

	// --8<-- [start:error-info]
	// 7. A call that fails: the status carries a google.rpc.ErrorInfo (reason, domain).
	c, cancel = call()
	_, err = edge.GetSession(c, &edgev1.GetSessionRequest{SessionId: sessionID + "-missing"})
	cancel()
	st, isStatus := status.FromError(err)
	if err == nil || !isStatus || st.Code() != codes.NotFound {
		fail("error-info", "GetSession of a missing session: want NOT_FOUND, got %v", err)
	}
	var info *errdetails.ErrorInfo
	for _, detail := range st.Details() {
		if found, isInfo := detail.(*errdetails.ErrorInfo); isInfo {
			info = found
		}
	}
	if info == nil || info.GetReason() == "" {
		fail("error-info", "no google.rpc.ErrorInfo in the status details: %v", st.Details())
	}
	ok("error-info", "code=%s reason=%s domain=%s", upperSnake(st.Code().String()), info.GetReason(), info.GetDomain())
	// --8<-- [end:error-info]

	fmt.Println("OK done")
}
