"""The CRM's own database (SQLite by default): customers and their orders, seeded from shipped data."""

from __future__ import annotations

import asyncio
import json
from datetime import date
from pathlib import Path
from typing import Any

from sqlalchemy import Date, Float, ForeignKey, String, func, select
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship, selectinload

__all__ = ["SEED_FILE", "CrmStore", "CustomerRow", "OrderRow"]

SEED_FILE = Path(__file__).with_name("customers.json")


class _Base(DeclarativeBase):
    pass


class CustomerRow(_Base):
    """A customer; email, phone and street address are personal data."""

    __tablename__ = "crm_customers"

    customer_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    email: Mapped[str] = mapped_column(String(320), unique=True, index=True)
    phone: Mapped[str] = mapped_column(String(40), default="")
    street: Mapped[str] = mapped_column(String(300), default="")
    city: Mapped[str] = mapped_column(String(100), default="")
    postal_code: Mapped[str] = mapped_column(String(20), default="")
    country: Mapped[str] = mapped_column(String(2), default="")
    plan: Mapped[str] = mapped_column(String(40), default="none")
    member_since: Mapped[date] = mapped_column(Date)
    orders: Mapped[list[OrderRow]] = relationship(
        back_populates="customer", order_by="OrderRow.ordered_at.desc()"
    )


class OrderRow(_Base):
    """One order of a customer."""

    __tablename__ = "crm_orders"

    order_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    customer_id: Mapped[str] = mapped_column(ForeignKey("crm_customers.customer_id"), index=True)
    item: Mapped[str] = mapped_column(String(200))
    amount: Mapped[float] = mapped_column(Float)
    currency: Mapped[str] = mapped_column(String(3))
    status: Mapped[str] = mapped_column(String(20))
    ordered_at: Mapped[date] = mapped_column(Date)
    customer: Mapped[CustomerRow] = relationship(back_populates="orders")


class CrmStore:
    """Async access to the CRM tables."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.engine: AsyncEngine = create_async_engine(url)
        self._sessions = async_sessionmaker(self.engine, expire_on_commit=False)

    @classmethod
    def at(cls, path: Path) -> CrmStore:
        """A store in the SQLite file ``path`` (its folder is created)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        return cls(f"sqlite+aiosqlite:///{path}")

    async def create(self, seed: Path | None = SEED_FILE) -> int:
        """Create the tables and insert the seed customers that are not there yet; returns how many."""
        async with self.engine.begin() as connection:
            await connection.run_sync(_Base.metadata.create_all)
        if seed is None:
            return 0
        records: list[dict[str, Any]] = json.loads(await asyncio.to_thread(seed.read_text, encoding="utf-8"))
        added = 0
        async with self._sessions.begin() as session:
            existing = set((await session.scalars(select(CustomerRow.customer_id))).all())
            for record in records:
                if record["customer_id"] in existing:
                    continue
                orders = [
                    OrderRow(**{**order, "ordered_at": date.fromisoformat(order["ordered_at"])})
                    for order in record.get("orders", [])
                ]
                fields = {k: v for k, v in record.items() if k != "orders"}
                fields["member_since"] = date.fromisoformat(fields["member_since"])
                session.add(CustomerRow(**fields, orders=orders))
                added += 1
        return added

    async def find(self, *, email: str = "", customer_id: str = "") -> CustomerRow | None:
        """The customer with this id, or else this email (case-insensitive), with orders loaded."""
        query = select(CustomerRow).options(selectinload(CustomerRow.orders))
        if customer_id:
            query = query.where(CustomerRow.customer_id == customer_id.strip())
        else:
            query = query.where(func.lower(CustomerRow.email) == email.strip().lower())
        async with self._sessions() as session:
            return (await session.scalars(query)).first()

    async def contacts(self) -> list[tuple[str, str, str]]:
        """Every customer's ``(customer_id, email, phone)``: what the pseudonym index is built from."""
        query = select(CustomerRow.customer_id, CustomerRow.email, CustomerRow.phone)
        async with self._sessions() as session:
            return [(row[0], row[1], row[2]) for row in (await session.execute(query)).all()]

    async def ping(self) -> bool:
        """Whether the database answers."""
        try:
            async with self._sessions() as session:
                await session.execute(select(1))
        except Exception:
            return False
        return True

    async def close(self) -> None:
        """Dispose of the connection pool."""
        await self.engine.dispose()
