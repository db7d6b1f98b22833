"""`make chaos`: a bounded fault suite under load, outside `make test`.

Starts its own embedded broker and mongod under ``.local/chaos`` (fresh each run, own
ports, loopback only) and the whole platform under the ``make run`` supervisor, then
drives leads through the gateway as clients would (every POST with an
``Idempotency-Key``): capture, then a qualifying behaviour (each lead is one
lead-qualified handoff, marketing -> sales); sales' reps accept every
``CHAOS_ACCEPT_EVERY``-th lead from their inbox (one lead-verdict handoff back to
marketing); every ``CHAOS_WIN_EVERY``-th accepted opportunity is taken to won with one
commitment (deal-won, sales -> service desk); once its account appears, the service
desk spots an upsell on it and flags the commitment (upsell-spotted and
commitment-flagged, service desk -> sales). Meanwhile it injects, in turn:

1. ``kills``: SIGKILL of a random service process, ``CHAOS_KILLS`` times (the supervisor
   restarts it; the next kill waits until it answers again);
2. ``broker-sigint``, ``broker-sigterm``, ``broker-sigkill``: the broker stopped with each
   signal and started again with the same command line;
3. ``mongod-restart``: mongod stopped (SIGTERM) and started again;
4. ``<service>-down``: one department (``CHAOS_DOWN_SERVICE``, default sales) held down
   for ``CHAOS_DOWN_SECONDS``, then started again and its backlog drained.

Then it waits for the platform to converge (bounded) and reports, per fault: what the
clients saw (HTTP status counts while it lasted), the recovery time, and lost / doubled
effects of each of the five handoffs for what was handed off while it lasted (read-only
queries of the departments' databases: this is ops tooling, not a service); the backlog
drain rate after the department returned; and analytics' difference from the
departments' own counts (captured, qualified, accepted, won). Figures go to
``bench/results/chaos.{txt,json}``.

Every loop and wait is bounded; the whole run stops by itself. Settings (environment):
``CHAOS_LEADS`` (10000), ``CHAOS_RATE`` leads/s offered (8: the load lasts about as long as
the faults), ``CHAOS_CLIENTS`` (32),
``CHAOS_KILLS`` (50), ``CHAOS_KILL_INTERVAL`` seconds between kills (2),
``CHAOS_DOWN_SERVICE`` (sales), ``CHAOS_DOWN_SECONDS`` (600), ``CHAOS_ACCEPT_EVERY`` (2),
``CHAOS_WIN_EVERY`` (4),
``CHAOS_CONVERGE_SECONDS`` (300), ``CHAOS_RESEND_AFTER_SECONDS`` (30: the platform's
``CRM_HANDOFF_RESEND_AFTER_SECONDS``; twice that is its
``CRM_HANDOFF_RESEND_SILENT_AFTER_SECONDS``), ``CHAOS_RECONCILE_SECONDS`` (60: analytics'
``CRM_ANALYTICS_RECONCILE_SECONDS``), ``CHAOS_SEED`` (random), ports ``CRM_CHAOS_KAFKA_PORT`` (29092),
``CRM_CHAOS_MONGO_PORT`` (29017), ``CRM_CHAOS_GATEWAY_PORT`` (29080),
``CRM_CHAOS_SERVICE_PORT_BASE`` (29000), data ``CRM_CHAOS_HOME`` (.local/chaos).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import shutil
import signal
import sys
import threading
import time
import uuid
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
from crm_platform.devinfra.embedded import EmbeddedInfra, port_accepts
from crm_platform.devinfra.journey import DEMO_USERS, Gateway, seed_rosters, seed_users
from crm_platform.devinfra.launcher import Platform, pid_alive
from crm_platform.devinfra.supervisor import RestartPolicy, Supervisor
from crm_platform.kafka import ensure_topics
from crm_platform.testing import EMBEDDED_IDLE_BACKOFF_MS
from pymongo import MongoClient

ROOT = Path(__file__).resolve().parents[1]
HOME = Path(os.environ.get("CRM_CHAOS_HOME", ROOT / ".local/chaos"))
RESULTS = ROOT / "bench/results"
ACCOUNT_WAIT = 300.0  # seconds after the load that won deals' accounts are still waited for
RECOVERY_TIMEOUT = 120.0  # seconds a fault may take to recover before it is reported as not recovered


def _env_int(name: str, default: int) -> int:
    return int(os.environ.get(name, str(default)))


def _env_float(name: str, default: float) -> float:
    return float(os.environ.get(name, str(default)))


@dataclass(frozen=True)
class Config:
    leads: int = field(default_factory=lambda: _env_int("CHAOS_LEADS", 10_000))
    rate: float = field(default_factory=lambda: _env_float("CHAOS_RATE", 8.0))
    clients: int = field(default_factory=lambda: _env_int("CHAOS_CLIENTS", 32))
    kills: int = field(default_factory=lambda: _env_int("CHAOS_KILLS", 50))
    kill_interval: float = field(default_factory=lambda: _env_float("CHAOS_KILL_INTERVAL", 2.0))
    down_service: str = field(default_factory=lambda: os.environ.get("CHAOS_DOWN_SERVICE", "sales"))
    down_seconds: float = field(default_factory=lambda: _env_float("CHAOS_DOWN_SECONDS", 600.0))
    converge_seconds: float = field(default_factory=lambda: _env_float("CHAOS_CONVERGE_SECONDS", 300.0))
    accept_every: int = field(default_factory=lambda: _env_int("CHAOS_ACCEPT_EVERY", 2))
    win_every: int = field(default_factory=lambda: _env_int("CHAOS_WIN_EVERY", 4))
    # The platform's own repair loops, shortened so a run converges in minutes: a handoff without
    # a receipt is re-sent after this long; analytics reconciles against the log this often.
    resend_after: float = field(default_factory=lambda: _env_float("CHAOS_RESEND_AFTER_SECONDS", 30.0))
    reconcile_every: float = field(default_factory=lambda: _env_float("CHAOS_RECONCILE_SECONDS", 60.0))
    seed: int = field(default_factory=lambda: _env_int("CHAOS_SEED", random.randrange(1 << 30)))
    kafka_port: int = field(default_factory=lambda: _env_int("CRM_CHAOS_KAFKA_PORT", 29092))
    mongo_port: int = field(default_factory=lambda: _env_int("CRM_CHAOS_MONGO_PORT", 29017))
    gateway_port: int = field(default_factory=lambda: _env_int("CRM_CHAOS_GATEWAY_PORT", 29080))
    service_port_base: int = field(default_factory=lambda: _env_int("CRM_CHAOS_SERVICE_PORT_BASE", 29000))


@dataclass
class Phase:
    name: str
    started: float
    ended: float | None = None
    recovery_seconds: float | None = None  # injection -> everything answers again (None: not recovered)
    statuses: Counter[str] = field(default_factory=Counter)  # what clients saw while it lasted
    detail: dict[str, Any] = field(default_factory=dict)


def say(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


class Chaos:
    """One run: infrastructure, platform, load, faults, measurements."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.random = random.Random(config.seed)
        self.infra = EmbeddedInfra(HOME, config.kafka_port, config.mongo_port)
        self.platform = Platform(
            self.infra.kafka_bootstrap,
            self.infra.mongodb_uri,
            HOME / "logs",
            gateway_port=config.gateway_port,
            service_port_base=config.service_port_base,
            consumer_idle_backoff_ms=EMBEDDED_IDLE_BACKOFF_MS,
            extra_env={
                "CRM_HANDOFF_RESEND_AFTER_SECONDS": str(config.resend_after),
                # A lone lost handoff (nothing later receipted) is re-sent after this.
                "CRM_HANDOFF_RESEND_SILENT_AFTER_SECONDS": str(2 * config.resend_after),
                "CRM_ANALYTICS_RECONCILE_SECONDS": str(config.reconcile_every),
            },
        )
        self.supervisor: Supervisor | None = None
        self.stopping = threading.Event()
        self.phases: list[Phase] = [Phase("warm-up (no fault)", time.monotonic())]
        self.qualified_in: dict[str, str] = {}  # lead id -> phase it qualified in
        self.to_accept: set[str] = set()  # leads sales' reps accept (a lead-verdict handoff each)
        self.accepted_in: dict[str, str] = {}  # lead id -> phase sales accepted it in
        self.unqualified = 0  # leads the load gave up on (client-visible failures, not losses)
        # Deals (every win_every-th accepted lead's opportunity is won with one commitment):
        self.to_win: list[tuple[str, str]] = []  # (opportunity id, rep username) not yet won
        self.won_in: dict[str, str] = {}  # deal id -> phase sales answered the win in
        self.awaiting_account: dict[str, float] = {}  # deal id -> when it was won (no account seen yet)
        self.signal_in: dict[str, str] = {}  # upsell signal id -> phase service-desk stored it in
        self.flag_in: dict[str, str] = {}  # commitment flag id -> phase service-desk stored it in
        self.deals_given_up = 0  # wins/signals/flags the load gave up on (client-visible, not losses)
        self.accept_done = False
        self.load_done: float | None = None
        self.tokens: dict[str, str] = {}
        self.usernames: dict[str, str] = {}  # user id -> username (owners are user ids)

    @property
    def phase(self) -> Phase:
        return self.phases[-1]

    # -- set-up and tear-down -----------------------------------------------------------------------

    def start(self) -> None:
        if HOME.exists():
            self.infra.stop()
            shutil.rmtree(HOME)
        say(f"embedded broker and mongod under {HOME} (kafka {self.infra.kafka_bootstrap})")
        self.infra.start()
        ensure_topics(self.infra.kafka_bootstrap, replication_factor=1)
        self.platform.start()
        self.platform.wait_ready(timeout=120)
        self.supervisor = Supervisor(
            self.platform, RestartPolicy(initial_delay=0.5, max_delay=10.0, max_attempts=100)
        )
        threading.Thread(target=self.supervisor.run, args=(self.stopping, 0.2), daemon=True).start()
        gw = Gateway(self.platform.url("gateway"))
        try:
            seed_users(gw)
            seed_rosters(gw)
            # One trial signup qualifies a lead: each lead is exactly one handoff.
            rules = gw.get("maria", "/api/leads/scoring-rules")
            gw.call("maria", "PUT", "/api/leads/scoring-rules", {**_rules_body(rules), "threshold": 40})
            self.tokens = dict(gw.tokens)
            self.usernames = {uid: name for name, uid in gw.user_ids.items()}
        finally:
            gw.close()

    def stop(self) -> None:
        self.stopping.set()
        self.platform.stop()
        self.infra.stop()

    # -- the load -----------------------------------------------------------------------------------

    async def load(self) -> None:
        c = self.config
        sem = asyncio.Semaphore(c.clients)
        limits = httpx.Limits(max_connections=c.clients, max_keepalive_connections=c.clients)
        async with httpx.AsyncClient(
            base_url=self.platform.url("gateway"), limits=limits, timeout=10
        ) as http:
            tasks = []
            started = time.monotonic()
            for i in range(c.leads):
                delay = started + i / c.rate - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                await sem.acquire()
                task = asyncio.create_task(self._one_lead(http, i))
                task.add_done_callback(lambda _: sem.release())
                tasks.append(task)
            await asyncio.gather(*tasks)
        self.load_done = time.monotonic()

    async def _one_lead(self, http: httpx.AsyncClient, i: int) -> None:
        body = {
            "name": f"Chaos Lead{i}",
            "email": f"chaos-{self.config.seed}-{i}@example.com",  # a retried capture merges by email
            "company": "Chaos GmbH",
            "source_channel": "web_form",
            "consent": {"marketing_email": True},
        }
        lead = await self._request(http, "POST", "/api/leads/leads", body)
        if lead is None:
            self.unqualified += 1
            return
        lead_id = str(lead["lead"]["id"])
        for _ in range(8):  # bounded retries of the qualifying behaviour
            phase = self.phase.name
            out = await self._request(
                http, "POST", f"/api/leads/leads/{lead_id}/behaviours", {"behaviour": "trial_signup"}
            )
            if out is not None and (
                out.get("qualified_now") or (out.get("lead") or {}).get("status") == "qualified"
            ):
                self.qualified_in.setdefault(lead_id, phase)
                if i % self.config.accept_every == 0:
                    self.to_accept.add(lead_id)
                return
            if out is not None:
                break  # answered, not qualified: nothing a retry would change
        self.unqualified += 1

    async def accept(self) -> None:
        """Sales' reps accept the chosen leads once they reach the inbox, until the load is over."""
        limits = httpx.Limits(max_connections=4, max_keepalive_connections=4)
        async with httpx.AsyncClient(
            base_url=self.platform.url("gateway"), limits=limits, timeout=10
        ) as http:
            while self.load_done is None or time.monotonic() - self.load_done < 60:
                pending = self.to_accept - set(self.accepted_in)
                if not pending:
                    if self.load_done is not None:
                        break
                    await asyncio.sleep(1.0)
                    continue
                page = await self._request(
                    http, "GET", "/api/sales/inbox?status=pending&limit=200", None, "sam"
                )
                items = [
                    i for i in (page or {}).get("items", []) if i["lead_id"] in pending and i.get("owner")
                ]
                gate = asyncio.Semaphore(4)  # the pool's size: no request waits for a connection
                await asyncio.gather(*(self._accept_one(http, item, gate) for item in items))
                if not items:
                    await asyncio.sleep(1.0)
        self.accept_done = True

    async def _accept_one(
        self, http: httpx.AsyncClient, item: dict[str, Any], gate: asyncio.Semaphore
    ) -> None:
        async with gate:
            phase = self.phase.name
            path = f"/api/sales/inbox/{item['lead_id']}/accept"
            rep = self.usernames[item["owner"]]  # owners are user ids; tokens are by username
            out = await self._request(http, "POST", path, {"note": "chaos"}, rep)
            if out is not None:
                self.accepted_in.setdefault(item["lead_id"], phase)
                opportunity = (out.get("opportunity") or {}).get("id")
                if opportunity and len(self.accepted_in) % self.config.win_every == 0:
                    self.to_win.append((str(opportunity), rep))

    async def _request(
        self, http: httpx.AsyncClient, method: str, path: str, body: Any, user: str = "maria"
    ) -> Any:
        """One request with bounded retries; every answer is counted in the current phase.

        A POST carries one ``Idempotency-Key`` for all its attempts, as a careful client's
        would: a retry after a timeout or a 503 has no second effect.
        """
        key = uuid.uuid4().hex
        for attempt in range(8):
            headers = {"Authorization": f"Bearer {self.tokens[user]}"}
            if method == "POST":
                headers["Idempotency-Key"] = key
            try:
                r = await http.request(method, path, json=body, headers=headers)
            except httpx.HTTPError as exc:
                self.phase.statuses[type(exc).__name__] += 1  # the phase the answer came in
            else:
                self.phase.statuses[str(r.status_code)] += 1
                if r.status_code < 300:
                    return r.json()
                if r.status_code == 401:
                    await self._relogin(http, user)
                elif r.status_code < 500 and r.status_code != 429:
                    return None
            await asyncio.sleep(min(0.5 * 2**attempt, 5.0))
        return None

    async def _relogin(self, http: httpx.AsyncClient, user: str) -> None:
        password = DEMO_USERS[user][0]
        try:
            r = await http.post("/auth/login", json={"username": user, "password": password})
            if r.status_code == 200:
                self.tokens[user] = r.json()["access_token"]
        except httpx.HTTPError:
            pass

    async def deals(self) -> None:
        """Win the chosen opportunities (deal-won: sales -> service desk), then, once each
        won deal is an account, spot an upsell on it and flag its commitment (upsell-spotted
        and commitment-flagged: service desk -> sales), all through the gateway.

        Runs until the acceptor is done and every won deal's account was seen, or until
        ``ACCOUNT_WAIT`` after the load ended (a deal whose account never appears is
        counted as lost by ``measure``, not here).
        """
        limits = httpx.Limits(max_connections=4, max_keepalive_connections=4)
        async with httpx.AsyncClient(
            base_url=self.platform.url("gateway"), limits=limits, timeout=10
        ) as http:
            gate = asyncio.Semaphore(4)
            while True:
                ended = self.load_done is not None and time.monotonic() - self.load_done > ACCOUNT_WAIT
                if ended or (self.accept_done and not self.to_win and not self.awaiting_account):
                    return
                batch, self.to_win = self.to_win, []
                await asyncio.gather(*(self._win(http, opp, rep, gate) for opp, rep in batch))
                waiting = sorted(self.awaiting_account, key=self.awaiting_account.__getitem__)[:40]
                await asyncio.gather(*(self._after_win(http, deal, gate) for deal in waiting))
                await asyncio.sleep(1.0)

    async def _win(self, http: httpx.AsyncClient, opp: str, rep: str, gate: asyncio.Semaphore) -> None:
        async with gate:
            for body in _win_steps():
                phase = self.phase.name
                path = f"/api/sales/opportunities/{opp}/{body.pop('_to')}"
                if await self._request(http, "POST", path, body, rep) is None:
                    self.deals_given_up += 1
                    return
            self.won_in[opp] = phase
            self.awaiting_account[opp] = time.monotonic()

    async def _after_win(self, http: httpx.AsyncClient, deal: str, gate: asyncio.Semaphore) -> None:
        async with gate:
            page = await self._request(
                http, "GET", f"/api/service-desk/accounts?deal_id={deal}", None, "sven"
            )
            items = (page or {}).get("items") or []
            if not items:
                return
            del self.awaiting_account[deal]
            account = items[0]
            base = f"/api/service-desk/accounts/{account['account_id']}"
            phase = self.phase.name
            body = {"kind": "upsell", "description": "chaos: more seats", "estimated_value": 1200}
            signal = await self._request(http, "POST", f"{base}/signals", body, "sven")
            if signal is not None:
                self.signal_in[str(signal["signal_id"])] = phase
            else:
                self.deals_given_up += 1
            for commitment in account.get("commitments", [])[:1]:
                phase = self.phase.name
                path = f"{base}/commitments/{commitment['commitment_id']}/flag"
                flag = await self._request(http, "POST", path, {"reason": "chaos: cannot deliver"}, "sven")
                if flag is not None and flag.get("flag_id"):
                    self.flag_in[str(flag["flag_id"])] = phase
                else:
                    self.deals_given_up += 1

    # -- the faults ---------------------------------------------------------------------------------

    def _begin(self, name: str) -> Phase:
        self.phase.ended = time.monotonic()
        phase = Phase(name, time.monotonic())
        self.phases.append(phase)
        say(f"fault: {name}")
        return phase

    def _recovered(self, phase: Phase, injected: float, names: tuple[str, ...] | None = None) -> None:
        phase.recovery_seconds = self._wait_ready(names, injected)
        shown = "NOT recovered" if phase.recovery_seconds is None else f"{phase.recovery_seconds:.1f} s"
        say(f"  recovered: {shown}")

    def _wait_ready(self, names: tuple[str, ...] | None, since: float) -> float | None:
        http_names = [
            n for n in (names or tuple(self.platform.procs)) if self.platform.spec(n).port_offset is not None
        ]
        deadline = since + RECOVERY_TIMEOUT
        with httpx.Client(timeout=2.0) as client:
            while time.monotonic() < deadline:
                if all(_ready(client, self.platform.url(n)) for n in http_names):
                    return time.monotonic() - since
                time.sleep(0.1)
        return None

    def faults(self) -> None:
        time.sleep(min(10.0, self.config.leads / self.config.rate / 10))  # some load before the first fault
        self.kills()
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGKILL):
            self.broker_restart(sig)
        self.mongod_restart()
        self.department_down()
        self._begin("after the faults (no fault)")

    def kills(self) -> None:
        phase = self._begin(f"kills ({self.config.kills} x SIGKILL of a random service)")
        assert self.supervisor is not None
        recoveries: list[float] = []
        victims: Counter[str] = Counter()
        for _ in range(self.config.kills):
            name = self.random.choice(sorted(self.platform.procs))
            proc = self.platform.procs[name]
            injected = time.monotonic()
            os.kill(proc.pid, signal.SIGKILL)
            victims[name] += 1
            took = self._replaced(name, proc.pid, injected)
            if took is not None and self.platform.spec(name).port_offset is not None:
                took = self._wait_ready((name,), injected)  # the worker has no HTTP: restarted is all we see
            if took is not None:
                recoveries.append(took)
            time.sleep(self.config.kill_interval)
        phase.recovery_seconds = max(recoveries) if len(recoveries) == self.config.kills else None
        phase.detail = {
            "victims": dict(victims),
            "recovered": len(recoveries),
            "recovery_p50_s": _pct(recoveries, 0.5),
            "recovery_max_s": max(recoveries, default=None),
            "restarts_by_supervisor": {n: s.restarts for n, s in self.supervisor.states.items()},
        }

    def _replaced(self, name: str, old_pid: int, since: float) -> float | None:
        """Seconds until the supervisor runs a new process for ``name`` (None: not in time)."""
        deadline = since + RECOVERY_TIMEOUT
        while time.monotonic() < deadline:
            current = self.platform.procs.get(name)
            if current is not None and current.pid != old_pid and current.poll() is None:
                return time.monotonic() - since
            time.sleep(0.05)
        return None

    def broker_restart(self, sig: signal.Signals) -> None:
        phase = self._begin(f"broker-{sig.name.lower()} (stop, then start with the same command line)")
        pid = self.infra.status()["kafka"]["pid"]
        injected = time.monotonic()
        if pid is not None:
            os.kill(pid, sig)
            deadline = time.monotonic() + 30
            while pid_alive(pid) and time.monotonic() < deadline:
                time.sleep(0.05)
            if pid_alive(pid):
                os.kill(pid, signal.SIGKILL)
        phase.detail["stopped_after_s"] = round(time.monotonic() - injected, 2)
        # Under load the broker's listener can outlive its reaped pid for a moment (its
        # other threads still closing): starting again then finds the port taken.
        released = time.monotonic() + 60
        while port_accepts(self.infra.kafka_port) and time.monotonic() < released:
            time.sleep(0.1)
        phase.detail["port_released_after_s"] = round(time.monotonic() - injected, 2)
        self.infra.start_kafka()
        self._recovered(phase, injected)
        time.sleep(5)  # let consumers rejoin under load before the next fault

    def mongod_restart(self) -> None:
        phase = self._begin("mongod-restart (SIGTERM, then start)")
        injected = time.monotonic()
        self.infra.stop_mongo()
        self.infra.start_mongo()
        self._recovered(phase, injected)
        time.sleep(5)

    def department_down(self) -> None:
        name = self.config.down_service
        phase = self._begin(f"{name}-down ({self.config.down_seconds:.0f} s)")
        assert self.supervisor is not None
        self.supervisor.hold(name)
        self.stopping.wait(self.config.down_seconds)
        backlog_at_return = len(self.qualified_in) - self._inbox_leads()
        returned = time.monotonic()
        self.supervisor.release(name)
        self._recovered(phase, returned, (name,))
        phase.detail.update(self._drain(backlog_at_return, returned))

    def _drain(self, backlog: int, since: float) -> dict[str, Any]:
        """How fast the held department catches up once it is back (bounded).

        The rate is taken up to the last item that arrived, so a handoff that never
        arrives (a loss) does not dilute it; the loss shows in the per-fault counts.
        """
        deadline = since + max(RECOVERY_TIMEOUT, backlog / 2)
        start_count = last = self._inbox_leads()
        last_change = time.monotonic()
        while time.monotonic() < deadline and last < len(self.qualified_in):
            time.sleep(0.5)
            now = self._inbox_leads()
            if now != last:
                last, last_change = now, time.monotonic()
            elif time.monotonic() - last_change > 30:
                break  # nothing arrived for 30 s: what is missing is not coming
        took = last_change - since
        drained = last - start_count
        return {
            "backlog_at_return": backlog,
            "drained": drained,
            "drain_seconds": round(took, 1),
            "drain_rate_per_s": round(drained / took, 1) if took > 0 else None,
            "caught_up": last >= len(self.qualified_in),
        }

    # -- measurements (read-only) -------------------------------------------------------------------

    def _db(self, service: str) -> Any:
        client: MongoClient[dict[str, Any]] = MongoClient(
            self.infra.mongodb_uri, serverSelectionTimeoutMS=5000
        )
        return client, client[service.replace("-", "_")]

    def _inbox_leads(self) -> int:
        return self._distinct_leads("sales", "inbox")

    def _distinct_leads(self, service: str, collection: str) -> int:
        client, db = self._db(service)
        try:
            return len(db[collection].distinct("lead_id"))
        except Exception:
            return 0
        finally:
            client.close()

    def converge(self) -> float:
        """Wait until the receivers stop changing (bounded); returns how long it took."""
        started = time.monotonic()
        deadline = started + self.config.converge_seconds
        # Unchanged for longer than a re-send takes (twice, to be sure): what is missing is lost.
        settle = max(45.0, 3 * self.config.resend_after + 15)  # the silent re-send comes at 2x
        last: tuple[int, ...] = ()
        stable_since = time.monotonic()
        expected = (
            len(self.qualified_in),
            len(self.accepted_in),
            len(self.won_in),
            len(self.signal_in),
            len(self.flag_in),
        )
        while time.monotonic() < deadline:
            now = self._received_counts()
            if now != last:
                last, stable_since = now, time.monotonic()
            elif all(n >= e for n, e in zip(now, expected, strict=True)) or (
                time.monotonic() - stable_since > settle
            ):
                break
            time.sleep(1.0)
        return time.monotonic() - started

    def _received_counts(self) -> tuple[int, ...]:
        """What the receivers hold: inbox leads, verdicts, accounts, upsells, flags."""
        sales_client, sales_db = self._db("sales")
        desk_client, desk_db = self._db("service-desk")
        try:
            upsells = sales_db["opportunities"].count_documents({"signal_id": {"$type": "string"}})
            flags = _count_flags(sales_db)
            accounts = desk_db["accounts"].count_documents({})
        except Exception:
            upsells = flags = accounts = 0
        finally:
            sales_client.close()
            desk_client.close()
        return (self._inbox_leads(), self._distinct_leads("leads", "verdicts"), accounts, upsells, flags)

    def measure(self) -> dict[str, Any]:
        leads_client, leads_db = self._db("leads")
        sales_client, sales_db = self._db("sales")
        try:
            qualified_db = {
                d["_id"] for d in leads_db["leads"].find({"qualified_at": {"$ne": None}}, {"_id": 1})
            }
            captured_db = leads_db["leads"].count_documents({})
            per_lead: Counter[str] = Counter()
            accepted_db: set[str] = set()
            for item in sales_db["inbox"].find({}, {"lead_id": 1, "status": 1}):
                per_lead[str(item["lead_id"])] += 1
                if item.get("status") == "accepted":
                    accepted_db.add(str(item["lead_id"]))
            verdicts: Counter[str] = Counter()
            for doc in leads_db["verdicts"].find({}, {"lead_id": 1}):
                verdicts[str(doc["lead_id"])] += 1
            deals = self._deal_handoffs(sales_db)
        finally:
            leads_client.close()
            sales_client.close()
        for phase in self.phases:
            self._phase_detail(phase, per_lead, verdicts, deals["per_id"])
        departments = {
            "captured": captured_db,
            "qualified": len(qualified_db),
            "accepted": len(accepted_db),
            "won": deals["won_in_sales_db"],
        }
        analytics, waited = self._analytics_settled(departments)
        return {
            "analytics_waited_seconds": round(waited, 1),
            "lead_qualified_total": {
                "qualified_in_leads_db": len(qualified_db),
                "distinct_in_sales_inbox": len(per_lead),
                "lost": len(qualified_db - set(per_lead)),
                "doubled": sum(1 for n in per_lead.values() if n > 1),
                "inbox_items_for_unknown_leads": len(set(per_lead) - qualified_db),
            },
            "lead_verdict_total": {
                "accepted_in_sales_db": len(accepted_db),
                "verdicts_in_leads_db": len(verdicts),
                "lost": len(accepted_db - set(verdicts)),
                "doubled": sum(1 for n in verdicts.values() if n > 1),
            },
            **deals["totals"],
            "analytics_vs_departments": {
                stage: _diff(analytics.get(stage), count) for stage, count in departments.items()
            },
        }

    def _phase_detail(
        self,
        phase: Phase,
        per_lead: Counter[str],
        verdicts: Counter[str],
        per_id: dict[str, tuple[dict[str, str], Counter[str]]],
    ) -> None:
        """What each handoff handed off while ``phase`` lasted, and how much of it was lost or doubled."""
        mine = [lead for lead, p in self.qualified_in.items() if p == phase.name]
        phase.detail["lead_qualified"] = {
            "qualified": len(mine),
            "lost": sum(1 for lead in mine if per_lead[lead] == 0),
            "doubled": sum(1 for lead in mine if per_lead[lead] > 1),
        }
        accepted = [lead for lead, p in self.accepted_in.items() if p == phase.name]
        phase.detail["lead_verdict"] = {
            "accepted": len(accepted),
            "lost": sum(1 for lead in accepted if verdicts[lead] == 0),
            "doubled": sum(1 for lead in accepted if verdicts[lead] > 1),
        }
        for handoff, (sent_in, received) in per_id.items():
            mine = [key for key, p in sent_in.items() if p == phase.name]
            phase.detail[handoff] = {
                "sent": len(mine),
                "lost": sum(1 for key in mine if received[key] == 0),
                "doubled": sum(1 for key in mine if received[key] > 1),
            }

    def _deal_handoffs(self, sales_db: Any) -> dict[str, Any]:
        """deal-won, upsell-spotted and commitment-flagged: what was sent, what arrived, how often.

        Sent is what the sending department stored (sales' won deals, service desk's
        signals and flags); received is what the receiver stored for it (accounts by
        deal id; opportunities by signal id; flags by flag id on the won deal).
        """
        desk_client, desk_db = self._db("service-desk")
        try:
            won = {str(d["_id"]) for d in sales_db["opportunities"].find({"status": "won"}, {"_id": 1})}
            accounts: Counter[str] = Counter()
            signals_sent: set[str] = set()
            flags_sent: set[str] = set()
            for account in desk_db["accounts"].find({}, {"deal_id": 1, "signals": 1, "commitments": 1}):
                accounts[str(account["deal_id"])] += 1
                signals_sent |= {str(s["signal_id"]) for s in account.get("signals") or []}
                flags_sent |= {
                    str(c["flag_id"]) for c in account.get("commitments") or [] if c.get("flag_id")
                }
            upsells: Counter[str] = Counter(
                str(d["signal_id"])
                for d in sales_db["opportunities"].find({"signal_id": {"$type": "string"}}, {"signal_id": 1})
            )
            flags: Counter[str] = Counter()
            for opp in sales_db["opportunities"].find({"commitment_flags.0": {"$exists": True}}):
                flags.update(str(f["flag_id"]) for f in opp["commitment_flags"])
        finally:
            desk_client.close()

        return {
            "won_in_sales_db": len(won),
            "per_id": {
                "deal_won": (self.won_in, accounts),
                "upsell_spotted": (self.signal_in, upsells),
                "commitment_flagged": (self.flag_in, flags),
            },
            "totals": {
                "deal_won_total": _handoff_total(won, accounts),
                "upsell_spotted_total": _handoff_total(signals_sent, upsells),
                "commitment_flagged_total": _handoff_total(flags_sent, flags),
            },
        }

    def _analytics_settled(self, departments: dict[str, int]) -> tuple[dict[str, int], float]:
        """Analytics' funnel once it matches the departments, or after a reconciliation period."""
        started = time.monotonic()
        deadline = started + self.config.reconcile_every + 30
        figures = self._analytics()
        while time.monotonic() < deadline and any(figures.get(k) != v for k, v in departments.items()):
            time.sleep(2.0)
            figures = self._analytics()
        return figures, time.monotonic() - started

    def _analytics(self) -> dict[str, int]:
        # A fresh login each time: access tokens live 15 minutes and a full run is longer.
        gateway = self.platform.url("gateway")
        try:
            login = httpx.post(
                f"{gateway}/auth/login",
                json={"username": "ana", "password": DEMO_USERS["ana"][0]},
                timeout=10,
            )
            token = login.json()["access_token"]
            r = httpx.get(
                f"{gateway}/api/analytics/funnel", headers={"Authorization": f"Bearer {token}"}, timeout=10
            )
            return dict(r.json()["stages"]) if r.status_code == 200 else {}
        except (httpx.HTTPError, KeyError, ValueError):
            return {}


def _win_steps() -> list[dict[str, Any]]:
    """The requests that take an opportunity to won (``_to`` is the path's last part).

    A small deal (3,000) with one commitment, so customer success has one to flag.
    """
    stage = "stage"
    return [
        {"_to": "activities", "type": "call", "summary": "chaos: discovery call"},
        {"_to": stage, "stage": "discovery", "fields": {"budget": 5000, "decision_maker": "CFO"}},
        {
            "_to": stage,
            "stage": "proposal",
            "fields": {
                "amount": 3000,
                "products": [{"sku": "CRM-STD", "name": "CRM seat", "quantity": 5, "unit_price": 600}],
            },
        },
        {"_to": stage, "stage": "negotiation", "fields": {"close_date": "2027-01-31"}},
        {
            "_to": stage,
            "stage": "won",
            "fields": {"commitments": [{"description": "chaos: onboarding workshop"}]},
        },
    ]


def _count_flags(sales_db: Any) -> int:
    rows = sales_db["opportunities"].aggregate(
        [
            {"$project": {"n": {"$size": {"$ifNull": ["$commitment_flags", []]}}}},
            {"$group": {"_id": None, "n": {"$sum": "$n"}}},
        ]
    )
    return int(next(iter(rows), {"n": 0})["n"])


def _rules_body(rules: dict[str, Any]) -> dict[str, Any]:
    return {"rules": rules["rules"], "note": "chaos: one trial signup qualifies"}


def _ready(client: httpx.Client, url: str) -> bool:
    try:
        return client.get(f"{url}/readyz").status_code == 200
    except httpx.HTTPError:
        return False


def _pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 2)


def _diff(analytics: int | None, department: int) -> dict[str, Any]:
    return {
        "analytics": analytics,
        "department": department,
        "difference": None if analytics is None else analytics - department,
    }


HANDOFF_COLUMNS = (  # (detail key, column title, what the first figure counts)
    ("lead_qualified", "lead-qualified", "qualified"),
    ("lead_verdict", "lead-verdict", "accepted"),
    ("deal_won", "deal-won", "sent"),
    ("upsell_spotted", "upsell-spotted", "sent"),
    ("commitment_flagged", "commitment-flagged", "sent"),
)


def _handoff_total(sent: set[str], received: Counter[str]) -> dict[str, int]:
    """One handoff over the run: sent (the sender's records), received, lost, doubled, unknown."""
    return {
        "sent": len(sent),
        "received": sum(1 for key in sent if received[key] > 0),
        "lost": sum(1 for key in sent if received[key] == 0),
        "doubled": sum(1 for key in sent if received[key] > 1),
        "received_unknown": len(set(received) - sent),
    }


def report(chaos: Chaos, totals: dict[str, Any], converge_s: float, elapsed: float) -> str:
    c = chaos.config
    lines = [
        f"make chaos: {c.leads} leads offered at {c.rate:g}/s through the gateway, {c.kills} kills, "
        f"{c.down_service} down {c.down_seconds:g} s (seed {c.seed}); {elapsed / 60:.1f} min in all",
        f"leads qualified: {len(chaos.qualified_in)}, given up by the load: {chaos.unqualified}; "
        f"accepted: {len(chaos.accepted_in)}; deals won: {len(chaos.won_in)}, upsells spotted: "
        f"{len(chaos.signal_in)}, commitments flagged: {len(chaos.flag_in)} (deal steps given up by "
        f"the load: {chaos.deals_given_up}); converged (or gave up waiting) after {converge_s:.0f} s",
        "",
        "per fault, per handoff: handed off while it lasted / lost / doubled (after convergence)",
        f"{'fault':<58} {'recovery':>9}  "
        + " ".join(f"{title:>18}" for _, title, _ in HANDOFF_COLUMNS)
        + "  clients saw",
    ]
    for p in chaos.phases:
        lines += _phase_lines(p)
    return "\n".join(lines + _total_lines(totals))


def _phase_lines(p: Phase) -> list[str]:
    """One fault's row of the report (and its extra details, if any)."""
    rec = (
        "-"
        if p.name.endswith("(no fault)")
        else ("NOT" if p.recovery_seconds is None else f"{p.recovery_seconds:.1f} s")
    )
    seen = ", ".join(f"{k}: {v}" for k, v in sorted(p.statuses.items()))
    cells = []
    for key, _, first in HANDOFF_COLUMNS:
        d = p.detail.get(key, {})
        cells.append(f"{d.get(first, 0)} / {d.get('lost', 0)} / {d.get('doubled', 0)}")
    lines = [f"{p.name:<58} {rec:>9}  " + " ".join(f"{cell:>18}" for cell in cells) + f"  {seen}"]
    extra = {k: v for k, v in p.detail.items() if k not in {key for key, _, _ in HANDOFF_COLUMNS}}
    if extra:
        lines.append(f"    {json.dumps(extra, default=str)}")
    return lines


def _total_lines(totals: dict[str, Any]) -> list[str]:
    """Each handoff over the whole run, and analytics against the departments."""
    t = totals["lead_qualified_total"]
    lines = [
        "",
        "after convergence, each handoff over the whole run (the departments' databases):",
        f"  lead-qualified: {t['qualified_in_leads_db']} qualified in leads' DB, "
        f"{t['distinct_in_sales_inbox']} distinct in sales' inbox: lost {t['lost']}, doubled {t['doubled']}",
        "  lead-verdict: {accepted_in_sales_db} accepted in sales' DB, "
        "{verdicts_in_leads_db} leads with a verdict in leads' DB: lost {lost}, doubled {doubled}".format(
            **totals["lead_verdict_total"]
        ),
    ]
    for key, title, sender, receiver in (
        ("deal_won_total", "deal-won", "won deals in sales' DB", "with an account in service desk's DB"),
        (
            "upsell_spotted_total",
            "upsell-spotted",
            "signals in service desk's DB",
            "with an opportunity in sales' DB",
        ),
        (
            "commitment_flagged_total",
            "commitment-flagged",
            "flags in service desk's DB",
            "recorded on the deal in sales' DB",
        ),
    ):
        d = totals[key]
        lines.append(
            f"  {title}: {d['sent']} {sender}, {d['received']} {receiver}: lost {d['lost']}, "
            f"doubled {d['doubled']}, received without a sender's record {d['received_unknown']}"
        )
    lines.append(
        f"analytics vs the departments' own counts (after waiting {totals['analytics_waited_seconds']} s "
        "for its reconciliation): "
        + ", ".join(
            f"{k} {v['analytics']} vs {v['department']} (difference {v['difference']})"
            for k, v in totals["analytics_vs_departments"].items()
        )
    )
    return lines


async def run(chaos: Chaos) -> tuple[dict[str, Any], float]:
    load = asyncio.create_task(chaos.load())
    acceptor = asyncio.create_task(chaos.accept())
    deals = asyncio.create_task(chaos.deals())
    await asyncio.to_thread(chaos.faults)
    await load
    await acceptor
    await deals
    chaos.phase.ended = time.monotonic()
    say("load finished; waiting for the receivers to converge ...")
    converge_s = await asyncio.to_thread(chaos.converge)
    return chaos.measure(), converge_s


def main() -> int:
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    logging.getLogger("crm.supervisor").setLevel(logging.INFO)
    if os.environ.get("KAFKA_BOOTSTRAP_SERVERS") or os.environ.get("MONGODB_URI"):
        print(
            "make chaos runs only on its own embedded broker and mongod; "
            "unset KAFKA_BOOTSTRAP_SERVERS and MONGODB_URI"
        )
        return 2
    config = Config()
    chaos = Chaos(config)
    started = time.monotonic()
    say(f"chaos settings: {json.dumps(asdict(config))}")
    try:
        chaos.start()
        totals, converge_s = asyncio.run(run(chaos))
    finally:
        chaos.stop()
    text = report(chaos, totals, converge_s, time.monotonic() - started)
    print(text)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "chaos.txt").write_text(text + "\n")
    (RESULTS / "chaos.json").write_text(
        json.dumps(
            {
                "config": asdict(config),
                "phases": [
                    {**asdict(p), "statuses": dict(p.statuses), "started": None, "ended": None}
                    for p in chaos.phases
                ],
                "totals": totals,
                "leads_qualified": len(chaos.qualified_in),
                "leads_accepted": len(chaos.accepted_in),
                "leads_given_up_by_load": chaos.unqualified,
                "deals_won": len(chaos.won_in),
                "upsells_spotted": len(chaos.signal_in),
                "commitments_flagged": len(chaos.flag_in),
                "deal_steps_given_up_by_load": chaos.deals_given_up,
                "converge_seconds": round(converge_s, 1),
                "at": time.strftime("%Y-%m-%dT%H:%M:%S"),
                "cpu_count": os.cpu_count(),
            },
            indent=2,
            default=str,
        )
    )
    say(f"written: {RESULTS / 'chaos.txt'}, {RESULTS / 'chaos.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
