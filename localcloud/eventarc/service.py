"""``google.cloud.eventarc.v1.Eventarc``: triggers as long-running operations, providers."""

from __future__ import annotations

import grpc
from google.cloud.eventarc_v1 import types
from google.longrunning import operations_pb2

from localcloud.core.errors import NotFound, Unimplemented
from localcloud.core.names import parse_parent
from localcloud.core.paging import page
from localcloud.core.wire import handler_for, rpc
from localcloud.eventarc import events
from localcloud.eventarc.router import EventRouter

SERVICE = "google.cloud.eventarc.v1.Eventarc"


def _provider(parent: str, provider: events.Provider) -> types.Provider:
    pb = types.Provider.pb()(
        name=f"{parent}/providers/{provider.name}", display_name=provider.display_name
    )
    for event_type, description in provider.event_types.items():
        et = pb.event_types.add(type_=event_type, description=description)
        for attribute in provider.required:
            et.filtering_attributes.add(attribute=attribute, required=True)
        for attribute in provider.path_pattern_attributes:
            et.filtering_attributes.add(
                attribute=attribute, required=False, path_pattern_supported=True
            )
    return pb


class EventarcService:
    def __init__(self, router: EventRouter) -> None:
        self.router = router

    @rpc("CreateTrigger", types.CreateTriggerRequest, operations_pb2.Operation)
    async def create_trigger(self, request, context):
        return await self.router.create(
            request.parent, request.trigger, request.trigger_id, request.validate_only
        )

    @rpc("GetTrigger", types.GetTriggerRequest, types.Trigger)
    async def get_trigger(self, request, context):
        return self.router.get(request.name)

    @rpc("ListTriggers", types.ListTriggersRequest, types.ListTriggersResponse)
    async def list_triggers(self, request, context):
        items, token = page(self.router.list(request.parent), request.page_size, request.page_token)
        return types.ListTriggersResponse.pb()(triggers=items, next_page_token=token)

    @rpc("UpdateTrigger", types.UpdateTriggerRequest, operations_pb2.Operation)
    async def update_trigger(self, request, context):
        return await self.router.update(
            request.trigger, request.update_mask, request.allow_missing, request.validate_only
        )

    @rpc("DeleteTrigger", types.DeleteTriggerRequest, operations_pb2.Operation)
    async def delete_trigger(self, request, context):
        return await self.router.delete(
            request.name, request.etag, request.allow_missing, request.validate_only
        )

    @rpc("ListProviders", types.ListProvidersRequest, types.ListProvidersResponse)
    async def list_providers(self, request, context):
        parse_parent(request.parent)
        providers = [_provider(request.parent, p) for p in events.PROVIDERS.values()]
        return types.ListProvidersResponse.pb()(providers=providers)

    @rpc("GetProvider", types.GetProviderRequest, types.Provider)
    async def get_provider(self, request, context):
        parent, _, provider_id = request.name.rpartition("/providers/")
        parse_parent(parent)
        provider = events.PROVIDERS.get(provider_id)
        if provider is None:
            raise NotFound(
                f"Provider {provider_id} not found (localcloud has {', '.join(events.PROVIDERS)})."
            )
        return _provider(parent, provider)

    @rpc("GetChannel", types.GetChannelRequest, types.Channel)
    async def get_channel(self, request, context):
        raise Unimplemented("Eventarc channels are not supported by localcloud.")

    def handler(self) -> grpc.GenericRpcHandler:
        return handler_for(SERVICE, self)
