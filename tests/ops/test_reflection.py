"""Server reflection: a generic client (as grpcurl) lists, describes and calls
the service knowing nothing but the server's address."""

from __future__ import annotations

from google.protobuf import descriptor_pool, message_factory
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

from tests.support.inproc import InProcessServer

from .helpers import CALL_TIMEOUT, SERVICE

METHODS = {
    # name: (request, response, server streaming)
    "Produce": ("ProduceRequest", "ProduceResponse", False),
    "Consume": ("ConsumeRequest", "ConsumeResponse", True),
    "Peek": ("PeekRequest", "PeekResponse", False),
    "Commit": ("CommitRequest", "CommitResponse", False),
    "GetOffset": ("GetOffsetRequest", "GetOffsetResponse", False),
    "ListSpaces": ("ListSpacesRequest", "ListSpacesResponse", False),
    "ListSegments": ("ListSegmentsRequest", "ListSegmentsResponse", False),
    "Trim": ("TrimRequest", "TrimResponse", False),
    "DeleteSegment": ("DeleteSegmentRequest", "DeleteSegmentResponse", False),
    "DeleteSpace": ("DeleteSpaceRequest", "DeleteSpaceResponse", False),
    "ConfigureSpace": ("ConfigureSpaceRequest", "ConfigureSpaceResponse", False),
    "GetSpace": ("GetSpaceRequest", "GetSpaceResponse", False),
    "GetSegment": ("GetSegmentRequest", "GetSegmentResponse", False),
    "WatchSegments": ("WatchSegmentsRequest", "WatchSegmentsResponse", True),
    "CreateGroup": ("CreateGroupRequest", "CreateGroupResponse", False),
    "GetGroup": ("GetGroupRequest", "GetGroupResponse", False),
    "ListGroups": ("ListGroupsRequest", "ListGroupsResponse", False),
    "DeleteGroup": ("DeleteGroupRequest", "DeleteGroupResponse", False),
    "Subscribe": ("SubscribeRequest", "SubscribeResponse", True),
}


def test_lists_services_and_describes_every_method(inproc: InProcessServer) -> None:
    database = ProtoReflectionDescriptorDatabase(inproc.channel)
    services = set(database.get_services())
    assert {SERVICE, "grpc.health.v1.Health"} <= services
    pool = descriptor_pool.DescriptorPool(database)
    service = pool.FindServiceByName(SERVICE)
    found = {
        m.name: (m.input_type.name, m.output_type.name, m.server_streaming) for m in service.methods
    }
    assert found == METHODS
    assert {m.name for m in service.methods if m.client_streaming} == {"Subscribe"}


def test_describes_a_message(inproc: InProcessServer) -> None:
    pool = descriptor_pool.DescriptorPool(ProtoReflectionDescriptorDatabase(inproc.channel))
    request = pool.FindMessageTypeByName("streams.v1.ProduceRequest")
    assert {"space", "writes", "transaction_id"} <= set(request.fields_by_name)
    writes = request.fields_by_name["writes"]
    assert writes.message_type.full_name == "streams.v1.SegmentWrite"
    record_input = writes.message_type.fields_by_name["records"].message_type
    assert {"payload", "metadata"} <= set(record_input.fields_by_name)


def test_a_generic_client_calls_through_reflected_descriptors(inproc: InProcessServer) -> None:
    pool = descriptor_pool.DescriptorPool(ProtoReflectionDescriptorDatabase(inproc.channel))
    method = pool.FindServiceByName(SERVICE).methods_by_name["Produce"]
    request_class = message_factory.GetMessageClass(method.input_type)
    response_class = message_factory.GetMessageClass(method.output_type)
    request = request_class()
    request.space = "reflected"
    write = request.writes.add()
    write.segment = "s"
    write.records.add().payload = b"via reflection"
    call = inproc.channel.unary_unary(
        f"/{SERVICE}/Produce",
        request_serializer=request_class.SerializeToString,
        response_deserializer=response_class.FromString,
    )
    response = call(request, timeout=CALL_TIMEOUT)
    assert response.last_position == 1
    assert [ack.last_sequence for ack in response.acks] == [1]
