"""Asks a running Ferry broker what it serves, the way generic gRPC tools do.

Usage: grpc_reflection_check.py HOST:PORT

For both reflection versions (grpc.reflection.v1, which grpcurl speaks, and
grpc.reflection.v1alpha, which grpcio-reflection, Postman and evans speak):
list the services, and fetch the file descriptor that defines ferry.v1.Ferry.
Then resolve the service through grpcio-reflection's own descriptor database
(v1alpha), and call the standard health check. Prints one JSON line with
what it found; exits 1 with the reason on the first thing that is wrong.
"""

import json
import sys

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

WANTED = {"ferry.v1.Ferry", "grpc.health.v1.Health"}
VERSIONS = ["grpc.reflection.v1", "grpc.reflection.v1alpha"]
TIMEOUT_S = 10


def fail(why):
    print(json.dumps({"ok": False, "error": why}))
    sys.exit(1)


def ask(channel, version, request):
    """One request on the version's ServerReflectionInfo stream.

    v1 and v1alpha messages are the same on the wire, so v1alpha's
    generated classes serve both.
    """
    call = channel.stream_stream(
        f"/{version}.ServerReflection/ServerReflectionInfo",
        request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
        response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
    )
    responses = list(call(iter([request]), timeout=TIMEOUT_S))
    if len(responses) != 1:
        fail(f"{version}: {len(responses)} responses to one request")
    response = responses[0]
    if response.HasField("error_response"):
        fail(f"{version}: error {response.error_response.error_message}")
    return response


def check_version(channel, version):
    listed = ask(channel, version, reflection_pb2.ServerReflectionRequest(list_services=""))
    services = sorted(s.name for s in listed.list_services_response.service)
    missing = WANTED - set(services)
    if missing:
        fail(f"{version}: services {services} lack {sorted(missing)}")

    found = ask(
        channel,
        version,
        reflection_pb2.ServerReflectionRequest(file_containing_symbol="ferry.v1.Ferry"),
    )
    files = [
        descriptor_pb2.FileDescriptorProto.FromString(raw)
        for raw in found.file_descriptor_response.file_descriptor_proto
    ]
    ferry = [
        f for f in files if f.package == "ferry.v1" and any(s.name == "Ferry" for s in f.service)
    ]
    if not ferry:
        fail(f"{version}: no file descriptor defines ferry.v1.Ferry: {[f.name for f in files]}")
    methods = sorted(m.name for s in ferry[0].service if s.name == "Ferry" for m in s.method)
    return {"services": services, "file": ferry[0].name, "methods": methods}


def main():
    if len(sys.argv) != 2:
        fail("usage: grpc_reflection_check.py HOST:PORT")
    channel = grpc.insecure_channel(sys.argv[1])
    try:
        grpc.channel_ready_future(channel).result(timeout=TIMEOUT_S)
    except grpc.FutureTimeoutError:
        fail(f"cannot connect to {sys.argv[1]}")

    report = {version: check_version(channel, version) for version in VERSIONS}

    # The client library's own path: a descriptor pool fed by reflection.
    pool = descriptor_pool.DescriptorPool(ProtoReflectionDescriptorDatabase(channel))
    service = pool.FindServiceByName("ferry.v1.Ferry")
    report["descriptor_database_methods"] = sorted(m.name for m in service.methods)
    if "Produce" not in report["descriptor_database_methods"]:
        fail(f"ferry.v1.Ferry has no Produce: {report['descriptor_database_methods']}")

    health = health_pb2_grpc.HealthStub(channel)
    for name in ["", "ferry.v1.Ferry"]:
        status = health.Check(health_pb2.HealthCheckRequest(service=name), timeout=TIMEOUT_S).status
        if status != health_pb2.HealthCheckResponse.SERVING:
            fail(f"health of {name!r}: {health_pb2.HealthCheckResponse.ServingStatus.Name(status)}")
    report["health"] = "SERVING"
    report["ok"] = True
    print(json.dumps(report, sort_keys=True))


if __name__ == "__main__":
    main()
