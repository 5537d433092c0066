"""crm: customer lookup in the CRM database, with personal data masked unless the caller may see it."""

from __future__ import annotations

from pathlib import Path

from prometheus_client import Counter
from pydantic import BaseModel, Field, model_validator

from agentmesh._errors import FailedPreconditionError
from agentmesh._settings import Settings
from agentmesh.agent import Agent, AgentInfo, SkillContext, skill
from agentmesh.agents._support import mask_email, mask_phone
from agentmesh.agents.crm._privacy import (
    full_address,
    masked_address,
    pii_refusal,
    planner_identity,
    refused_token_reason,
)
from agentmesh.agents.crm._store import SEED_FILE, CrmStore, CustomerRow
from agentmesh.audit import Pseudonyms, is_pseudonym
from agentmesh.security import agent_spiffe_id

__all__ = ["REFUSED_TOKENS", "CrmAgent", "Customer", "LookupInput", "LookupOutput", "Order", "customer_view"]

REFUSED_TOKENS = Counter(
    "agentmesh_crm_refused_tokens_total",
    "Delegation tokens presented to the CRM that did not unlock personal data, by reason.",
    ["reason"],
)


class LookupInput(BaseModel):
    """Who to look up: a customer id, or else an email address (or its keyed pseudonym, as the gateway's
    redaction leaves it: ``[email:...]``)."""

    email: str = Field(default="", max_length=320)
    customer_id: str = Field(default="", max_length=32)
    include_pii: bool = Field(
        default=False,
        description="Ask for unmasked email, phone and address (granted only to allowed callers).",
    )

    @model_validator(mode="after")
    def _one_key(self) -> LookupInput:
        if not self.email.strip() and not self.customer_id.strip():
            raise ValueError("give an email or a customer_id")
        return self


class Order(BaseModel):
    """One order."""

    order_id: str
    item: str
    amount: float
    currency: str
    status: str
    ordered_at: str


class Customer(BaseModel):
    """A customer record; ``email``, ``phone`` and ``address`` are masked unless ``masked`` is false."""

    customer_id: str
    name: str
    email: str
    phone: str
    address: str
    plan: str
    member_since: str
    orders: list[Order]


class LookupOutput(BaseModel):
    """The customer, if found."""

    found: bool
    customer: Customer | None = None
    masked: bool = Field(description="True when personal fields were masked for this caller.")


class CrmAgent(Agent):
    """Looks customers up in its own SQL table (SQLite under the mesh home by default), seeded from
    ``customers.json`` at start.
    """

    card = AgentInfo(
        name="crm",
        namespace="support",
        version="1.0.0",
        purpose="customer-lookup",
        description=(
            "Looks up a customer by email or customer id in the CRM database: name, plan, orders and contact "
            "details. Personal data is masked unless the planner asks for it under a signed step token."
        ),
        policies=("pii:restricted",),
        labels={"domain": "customer-service", "store": "sql"},
        owner="support-platform",
    )

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        database_url: str = "",
        seed: Path | None = SEED_FILE,
        pii_callers: frozenset[str] | None = None,
    ) -> None:
        super().__init__(settings)
        self.database_url = database_url
        self.seed = seed
        # Only the planner, by default; a deployment may name others (e.g. a back-office service).
        self.pii_callers = (
            pii_callers
            if pii_callers is not None
            else frozenset({planner_identity(self.settings.trust_domain)})
        )
        self.store: CrmStore | None = None
        # The mesh's keyed pseudonyms (None without a secret) and the customers indexed by them.
        self.pseudonyms: Pseudonyms | None = None
        self._by_pseudonym: dict[str, str] = {}

    @property
    def spiffe_id(self) -> str:
        """This agent's identity, which step tokens must name as audience (from the card, which
        ``agentmesh agent run --namespace`` may replace after construction)."""
        return agent_spiffe_id(self.settings.trust_domain, self.card.namespace, self.card.name)

    async def startup(self) -> None:
        """Open the database (``<home>/agents/crm/crm.db`` unless a URL was given), seed it, and index the
        customers by the pseudonyms of their email and phone when the mesh has a pseudonym secret."""
        self.store = (
            CrmStore(self.database_url)
            if self.database_url
            else CrmStore.at(Path(self.settings.home) / "agents" / "crm" / "crm.db")
        )
        await self.store.create(self.seed)
        self.pseudonyms = Pseudonyms.from_settings(self.settings)
        await self.index_pseudonyms()

    async def index_pseudonyms(self) -> int:
        """(Re)build the pseudonym index from the database; how many customers it holds (0 without a secret)."""
        if self.store is None or self.pseudonyms is None:
            return 0
        index: dict[str, str] = {}
        for customer_id, email, phone in await self.store.contacts():
            if email:
                index[self.pseudonyms.email(email)] = customer_id
            if phone:
                index[self.pseudonyms.phone(phone)] = customer_id
        self._by_pseudonym = index
        return len({*index.values()})

    async def shutdown(self) -> None:
        """Close the database."""
        if self.store is not None:
            await self.store.close()

    async def ready(self) -> bool:
        """Serving while the database answers."""
        return self.store is not None and await self.store.ping()

    @skill(
        description="Look up a customer by email or customer_id; PII is masked unless the caller may see it."
    )
    async def lookup_customer(self, request: LookupInput, ctx: SkillContext) -> LookupOutput:
        """Find the customer and mask personal fields for callers that may not see them."""
        if self.store is None:
            raise FailedPreconditionError("the CRM database is not open yet")
        email, customer_id = request.email, request.customer_id
        if not customer_id and is_pseudonym(email):  # a redacted ticket: find the customer by pseudonym
            email, customer_id = "", self._by_pseudonym.get(email.strip(), "")
        row = await self.store.find(email=email, customer_id=customer_id) if email or customer_id else None
        refusal = pii_refusal(
            requested=request.include_pii,
            caller=ctx.caller,
            allowed_callers=self.pii_callers,
            delegation=ctx.delegation,
            delegation_refusal=ctx.delegation_refusal,
            task_id=ctx.task_id,
            audience=self.spiffe_id,
        )
        refused = refused_token_reason(
            token_presented=bool(ctx.delegation_token),
            delegation_refusal=ctx.delegation_refusal,
            pii_refusal=refusal,
        )
        if refused:  # the lookup itself is still served, masked
            REFUSED_TOKENS.labels(refused).inc()
        visible = not refusal
        if row is None:
            return LookupOutput(found=False, customer=None, masked=not visible)
        return LookupOutput(found=True, customer=customer_view(row, reveal_pii=visible), masked=not visible)


def customer_view(row: CustomerRow, *, reveal_pii: bool) -> Customer:
    """The record as returned to a caller, personal fields masked unless ``reveal_pii``."""
    address = (full_address if reveal_pii else masked_address)(
        row.street, row.city, row.postal_code, row.country
    )
    return Customer(
        customer_id=row.customer_id,
        name=row.name,
        email=row.email if reveal_pii else mask_email(row.email),
        phone=row.phone if reveal_pii else mask_phone(row.phone),
        address=address,
        plan=row.plan,
        member_since=row.member_since.isoformat(),
        orders=[
            Order(
                order_id=o.order_id,
                item=o.item,
                amount=o.amount,
                currency=o.currency,
                status=o.status,
                ordered_at=o.ordered_at.isoformat(),
            )
            for o in row.orders
        ],
    )
