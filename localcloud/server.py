"""The API server: one asyncio loop carrying gRPC (all our Google APIs) and HTTP.

``LocalCloud`` wires the stores and engines to the wire layer. Later services add their
servicers in ``_handlers``; everything shares the database, the operations store, the
IAM policies, the OIDC issuer and the HTTP client session.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import aiohttp
import grpc
from aiohttp import web

from localcloud import serviceusage
from localcloud.artifactregistry.service import RepositoriesService
from localcloud.artifactregistry.store import RepositoryStore
from localcloud.cloudbuild.builder import Builder
from localcloud.cloudbuild.service import CloudBuildService
from localcloud.cloudbuild.store import BuildStore
from localcloud.core import acks, authz, identity, permissions, proxying
from localcloud.core.config import Config
from localcloud.core.db import Database
from localcloud.core.errors import Unauthenticated
from localcloud.core.iam import IamService, PolicyStore, Resolver
from localcloud.core.lifecycle import Calls, Parts
from localcloud.core.oidc import Issuer, MetadataCaller, aiohttp_routes, metadata_routes
from localcloud.core.peers import Identity, peers
from localcloud.core.wire import ServiceHandler
from localcloud.eventarc.router import EventRouter
from localcloud.eventarc.service import EventarcService
from localcloud.eventarc.store import TriggerStore
from localcloud.functions.engine import Functions
from localcloud.functions.service import FunctionService
from localcloud.functions.sources import Sources
from localcloud.functions.store import FunctionStore
from localcloud.iam.projects import ProjectsService
from localcloud.iam.service import IamAdminService
from localcloud.iam.store import AccountStore
from localcloud.operations.service import OperationsService
from localcloud.operations.store import OperationStore
from localcloud.pubsub.engine import PubSub
from localcloud.pubsub.push import PushWorker
from localcloud.pubsub.service import Publisher, Subscriber, pubsub_resources
from localcloud.rest import aliases
from localcloud.rest.front import Front
from localcloud.run import knative, sandbox
from localcloud.run.autoscaler import Autoscaler
from localcloud.run.controller import Controller
from localcloud.run.images import ImageCache
from localcloud.run.ingress import Ingress
from localcloud.run.service import RevisionsService, ServicesService
from localcloud.run.store import RunStore
from localcloud.storage.notifier import Notifier
from localcloud.workflows.engine import WorkflowsEngine, project_number
from localcloud.workflows.runtime import Engines, Runtime
from localcloud.workflows.service import ExecutionsService, WorkflowsService
from localcloud.workflows.store import WorkflowStore

LOG = logging.getLogger(__name__)
WHOAMI_PATH = "/localcloud/v1/whoami"
MAX_MESSAGE = 32 * 1024 * 1024  # above Pub/Sub's 10 MB so oversize gets INVALID_ARGUMENT


class LocalCloud:
    """The engines behind the APIs, started and stopped as ``Parts`` (``core/lifecycle``)."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.health: dict[str, Any] = {}
        self.parts = Parts()
        self.resolvers: list[Resolver] = []
        self._grpc: grpc.aio.Server | None = None
        self._http: web.AppRunner | None = None
        self.session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        cfg = self.config
        cfg.data_dir.mkdir(parents=True, exist_ok=True)
        self.db = Database(cfg.data_dir / "localcloud.db", fsync=cfg.fsync)
        self.operations = OperationStore(self.db)
        self.policies = PolicyStore(self.db, domain_restricted=cfg.org_policy_domain_restricted)
        self.accounts = AccountStore(self.db)
        self.authz = authz.Authorizer(
            self.policies.get,
            default_project=cfg.project,
            custom_role=self.accounts.role,
            generation=self.policies.generation,
        )
        self.policies.default = self.authz.default_policy
        self.policies.grantable = self.authz.check_grantable
        authz.configure(self.authz)
        permissions.configure(cfg.iam)
        self.pubsub = PubSub(self.db, push_backoff=(cfg.push_min_backoff, cfg.push_max_backoff))
        self.builds = BuildStore(self.db)
        self.repositories = RepositoryStore(self.db)
        self.run_store = RunStore(self.db)
        self.triggers = TriggerStore(self.db)
        self.workflow_store = WorkflowStore(self.db)
        self.notifier = Notifier(self.pubsub, self.db, cfg)
        await self.parts.start("database", Calls(self.db.start, self.db.close))
        self.issuer = Issuer(cfg.data_dir / "oidc", cfg.http_url)
        peers.open()  # here, in the host's network namespace
        self.resolver = identity.Resolver(self.issuer, peers, cfg.host, cfg.grpc_port)
        identity.configure(
            cfg.principal or identity.default_principal(cfg.project),
            self.resolver.grpc,
            self.resolver.http,
        )
        session = self.session = aiohttp.ClientSession()
        self.pubsub.push_factory = lambda engine, st: PushWorker(engine, st, session, self.issuer)
        self.pubsub.on_delete.append(self.policies.forget)
        self.resolvers.append(pubsub_resources(self.pubsub))
        await self.parts.start("pubsub", self.pubsub)
        await self.parts.start("storage notifications", self.notifier)
        self.builder = Builder(
            cfg,
            self.builds,
            self.operations,
            self.pubsub,
            session,
            limit=cfg.build_limit,
            issuer=self.issuer,
        )
        await self.parts.start("cloud build", self.builder)
        images = ImageCache(
            cfg.data_dir / "run" / "images", cfg.registry_address, session, self.issuer
        )
        self.autoscaler = Autoscaler(images, cfg.run_idle_seconds, spares=cfg.run_spares)
        self.controller = Controller(
            cfg, self.run_store, self.operations, self.policies, self.autoscaler, cfg.client_env()
        )
        self.ingress = Ingress(self.controller, self.issuer, cfg.host, cfg.ingress_port)
        self.controller.ingress = self.ingress
        isolation = sandbox.isolation()
        await self.parts.start("sandbox", Calls(isolation.open, isolation.close))
        await self.parts.start("cloud run ingress", self.ingress)
        await self.parts.start("cloud run instances", self.autoscaler)
        await self.parts.start("cloud run", self.controller)
        self.router = EventRouter(cfg, self.triggers, self.operations, self.pubsub, self.controller)
        await self.parts.start("eventarc", self.router)
        self.functions = Functions(
            cfg, FunctionStore(self.db), self.operations, self.builder, self.controller,
            self.router, self.repositories, Sources(cfg, session),
        )  # fmt: skip
        await self.parts.start("cloud functions", self.functions)
        engines = Engines(self.pubsub, self.builder, self.controller, self.operations)
        self.workflows = WorkflowsEngine(
            self.workflow_store, self.operations, Runtime(session, self.issuer, engines)
        )
        await self.parts.start("workflows", self.workflows)

        self._grpc = grpc.aio.server(
            options=[
                ("grpc.max_receive_message_length", MAX_MESSAGE),
                ("grpc.max_send_message_length", MAX_MESSAGE),
                ("grpc.so_reuseport", 0),
            ]
        )
        handlers = self._handlers()
        self._grpc.add_generic_rpc_handlers(handlers)
        bound = self._grpc.add_insecure_port(cfg.grpc_address)
        if bound == 0:
            raise OSError(f"could not bind the gRPC server to {cfg.grpc_address}")
        await self._grpc.start()

        app = web.Application(client_max_size=MAX_MESSAGE)
        app.middlewares.append(acks.middleware)
        app.middlewares.append(proxying.middleware(cfg, lambda: self.session))
        app.add_routes(knative.routes(self.controller))
        app.add_routes(aiohttp_routes(self.issuer))
        app.add_routes(metadata_routes(self.issuer, self._metadata_caller, project_number))
        app.add_routes(serviceusage.routes(cfg.project))
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get(WHOAMI_PATH, self._whoami)
        # Every API over HTTP/JSON too, under "/" (localcloud/rest); after the routes above.
        served = [b for h in handlers if isinstance(h, ServiceHandler) for b in h.methods.values()]
        app.add_routes(aliases.routes(served))
        front = Front(served, MAX_MESSAGE, aliases.ALIASES)
        app.add_routes(front.route_defs())
        app.on_cleanup.append(front.close)
        self._http = web.AppRunner(app, access_log=None)
        await self._http.setup()
        await web.TCPSite(self._http, cfg.host, cfg.http_port, reuse_address=True).start()
        LOG.info("gRPC APIs on %s, HTTP on %s", cfg.grpc_address, cfg.http_url)

    def _handlers(self) -> list[grpc.GenericRpcHandler]:
        iam = IamService(self.policies)
        iam.resolvers.extend(self.resolvers)
        return [
            Publisher(self.pubsub).handler(),
            Subscriber(self.pubsub).handler(),
            OperationsService(self.operations).handler(),
            CloudBuildService(self.builder).handler(),
            ServicesService(self.controller).handler(),
            RevisionsService(self.controller).handler(),
            EventarcService(self.router).handler(),
            WorkflowsService(self.workflows).handler(),
            ExecutionsService(self.workflows).handler(),
            iam.handler(),
            ProjectsService(self.policies, self.config.project).handler(),
            IamAdminService(self.accounts, self.policies).handler(),
            RepositoriesService(self.repositories, self.operations, self.policies).handler(),
            FunctionService(self.functions).handler(),
        ]

    def _metadata_caller(self, request: web.Request) -> Identity:
        """Whom the metadata server speaks for: the asking instance's service account, or
        on the user's own machine the local user."""
        transport = request.transport
        peer = transport.get_extra_info("peername") if transport is not None else None
        local = transport.get_extra_info("sockname") if transport is not None else None
        try:
            instance = self.resolver.connection(
                (peer[0], peer[1]) if isinstance(peer, tuple) else None,
                (local[0], local[1]) if isinstance(local, tuple) else ("", 0),
            )
        except Unauthenticated as exc:
            raise MetadataCaller("the metadata server cannot tell who is asking") from exc
        if instance is not None:
            return instance
        cfg = self.config
        email = identity.email_of(identity.local_user())
        return Identity(email, cfg.project, cfg.region, "")

    async def _whoami(self, request: web.Request) -> web.Response:
        """Who localcloud takes the caller of this request to be (docs/localcloud.md)."""
        try:
            caller = self.resolver.http_caller(request)
        except Unauthenticated as exc:
            return identity.http_error(exc)
        body: dict[str, Any] = {"member": caller.member, "via": caller.via}
        if caller.instance is not None:
            body["revision"] = caller.instance.revision
        return web.json_response(body)

    async def _healthz(self, request: web.Request) -> web.Response:
        ok = all(v == "ok" for v in self.health.values())
        body = {
            "status": "ok" if ok else "degraded",
            "parts": self.health,
            "sandbox": sandbox.isolation().report(self.config.run_isolation == "full"),
        }
        return web.json_response(body, status=200 if ok else 503)

    async def stop(self) -> None:
        # Stop accepting RPCs first, then end open streams with UNAVAILABLE: a client that
        # reconnects at once is refused instead of landing on a server about to go away.
        stopping = None
        if self._grpc is not None:
            stopping = asyncio.get_running_loop().create_task(self._grpc.stop(grace=2.0))
            await asyncio.sleep(0)
        await self.parts.stop()  # the engines, in reverse order, the database last
        if stopping is not None:
            await stopping
        if self._http is not None:
            await self._http.cleanup()
        if self.session is not None:
            await self.session.close()
        peers.close()
