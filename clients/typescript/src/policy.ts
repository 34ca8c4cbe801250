// Package aeterna.policy.v1 spans two proto files; this barrel exposes it as one namespace.
export * from "./gen/aeterna/policy/v1/decision_pb.js";
export * from "./gen/aeterna/policy/v1/policy_pb.js";
