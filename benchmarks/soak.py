"""A chaos soak: a three-node cluster on loopback runs a mixed workload while a chaos thread kills its processes.

    python benchmarks/soak.py [--seconds 60] [--seed N] [--no-lineage] [--ops a,b] [--faults a,b]
                              [--redis-down S] [--keep] [--verbose]

The script starts its own Redis (append-only file on, so a restarted server comes back with what it had,
as a production store does) and three node daemons on it, in a private cluster directory, and connects a
driver to the head. Driver threads then run, until ``--seconds`` have passed, random operations out of:
tasks, nested tasks, actors with ``max_restarts``/``max_task_retries``, numpy objects of several MB moved
between nodes (put on the driver and read on another node; made on one node and read on another and on the
driver), a named actor looked up by name, streaming generators and placement groups. Every result is
checked against the value it must have.

Meanwhile a chaos thread, every 1 to 3 s, SIGKILLs (by pid) a random worker process, a process of one of
the workload's actors, the third node (restarted a few seconds later by ``anyray start --address``'s code
path), or Redis (restarted on the same port with the same data directory after 0.1 to 1 s; ``--redis-down``
makes the outage longer). ``--ops`` and ``--faults`` narrow the mix to reproduce a finding; ``--seed`` repeats
a run's choices (not its timings).

Each operation ends in one of:

- **checked**: its result is right;
- **expected error**: an error Ray raises for the same fault (a task whose retries all ran into kills:
  ``WorkerCrashedError``; an actor out of restarts: ``ActorDiedError``; ...; see ``EXPECTED``);
- **wrong**: a result that is not the expected value, or an error Ray would not raise;
- **hung**: past its deadline (``OP_DEADLINE``; a watchdog counts an operation that never returns);
- **lost**: ``ObjectLostError`` for an object Ray would have kept. The rule (``lost_counts``): an object put
  by the driver lives on the head, which is never killed, so losing it is always lost; a task's return lost
  while the third node died during the operation is what lineage reconstruction rebuilds, so it is lost too
  (``--no-lineage`` counts it as an expected error instead); what Ray raises as well when a node dies is
  expected: ``OwnerDiedError`` (the object's owner lived there) and ``ObjectReconstructionFailedError`` (its
  task's retries ran out); any other loss is lost.

Once the work has ended, every CPU of the cluster must be free again (a resource still held is counted as
wrong). It prints the counts and ends with ``soak: F faults, N results checked, W wrong, H hung, L lost``; it
exits 1 if W, H or L is not 0, or if a process it started outlived the stop (checked with psutil).
"""

from __future__ import annotations

import argparse
import collections
import os
import random
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import traceback

import numpy as np
import psutil

import anyray
from anyray import exceptions as exc
from anyray.adapters.cluster import files, launch
from anyray.util.placement_group import placement_group, remove_placement_group
from anyray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

OP_DEADLINE = 60.0  # seconds an operation may take before it counts as hung (a node's death is noticed in ~3 s)
GET_TIMEOUT = 45.0  # the timeout of each get inside an operation: past it, GetTimeoutError, counted as hung
DRIVER_THREADS = 3
NODE_CPUS = 2
BIG = 4 * 1024 * 1024 // 8  # float64s: 4 MiB objects
NAMED = "soak-directory"

# Errors Ray raises for the faults this soak injects. Found as the error itself or as the cause of a
# TaskError (a nested task's inner task ran into a kill, say).
EXPECTED = (exc.WorkerCrashedError, exc.RayActorError, exc.NodeDiedError, exc.TaskUnschedulableError,
            exc.ActorUnschedulableError)
LOSSES = (exc.ObjectLostError,)  # with ObjectFetchTimedOutError
RAY_LOSES_TOO = (exc.OwnerDiedError, exc.ObjectReconstructionFailedError)  # when a node died meanwhile


# -- the workload's remote code ---------------------------------------------------------------------------

@anyray.remote(max_retries=3)
def square(x):
    return x * x


@anyray.remote(max_retries=3)
def outer(n):
    return sum(anyray.get([square.remote(i) for i in range(n)], timeout=GET_TIMEOUT))


@anyray.remote(max_retries=3)
def make_big(seed):
    return np.random.default_rng(seed).random(BIG)


@anyray.remote(max_retries=3)
def digest(array):
    return float(array.sum()), int(array.size)


@anyray.remote(max_retries=3)
def count_up(n):
    for i in range(n):
        yield i * 10


@anyray.remote(max_restarts=3, max_task_retries=2)
class Worker:
    def mul(self, x):
        return x * 7, os.getpid()

    def digest(self, array):
        return float(array.sum()), os.getpid()


@anyray.remote(max_restarts=-1, max_task_retries=-1)
class Directory:
    def echo(self, x):
        return x, os.getpid()


def expected_digest(seed):
    array = np.random.default_rng(seed).random(BIG)
    return float(array.sum()), int(array.size)


# -- the cluster -------------------------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Redis:
    """The cluster's metadata server, with its append-only file in ``directory``: restarted on the same port
    and directory, it comes back with every record it had."""

    def __init__(self, directory: str):
        self.directory, self.password, self.port, self.proc = directory, secrets.token_hex(12), free_port(), None
        self.url = f"redis://:{self.password}@127.0.0.1:{self.port}/0"

    def start(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            sys.exit("soak: redis-server is not installed (bash tests/install-servers.sh installs it)")
        # The password goes in on stdin, as a config file: never argv.
        self.proc = subprocess.Popen([binary, "-"], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL, start_new_session=True)
        self.proc.stdin.write((f"port {self.port}\nbind 127.0.0.1\nrequirepass \"{self.password}\"\n"
                               f"dir {self.directory}\nappendonly yes\nappendfsync always\nsave \"\"\n"
                               f"logfile {os.path.join(self.directory, 'redis.log')}\n"
                               f"notify-keyspace-events Ex\ndaemonize no\n").encode())
        self.proc.stdin.close()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                    s.sendall(f"AUTH {self.password}\r\nPING\r\n".encode())
                    time.sleep(0.05)
                    if b"+PONG" in s.recv(200):
                        return
            except OSError:
                pass
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        raise RuntimeError(f"redis-server did not start on port {self.port}; see {self.directory}/redis.log")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()


class Cluster:
    """Three node daemons: the head (never killed), B, and C (the one the chaos thread kills and restarts)."""

    def __init__(self, directory: str, redis: Redis):
        self.directory, self.redis = directory, redis
        self.token = files.read_token(files.new_token(directory))
        self.procs: dict[str, subprocess.Popen] = {}
        self.records: dict[str, dict] = {}
        self.seen: set[int] = set()  # every process of the cluster ever seen, for the leftover check

    def start_node(self, name: str) -> None:
        head = name == "head"
        proc, record = launch.spawn(
            directory=self.directory, token=self.token, head=head, num_cpus=NODE_CPUS,
            resources={f"node_{name}": 100}, metadata=self.redis.url if head else None,
            address=None if head else self.records["head"]["address"])
        self.procs[name], self.records[name] = proc, record
        self.seen.add(proc.pid)

    def alive(self, name: str) -> bool:
        proc = self.procs.get(name)
        return proc is not None and proc.poll() is None

    def kill_node(self, name: str) -> None:
        proc = self.procs[name]
        self.note_processes()
        proc.kill()  # its fork server and workers watch it and follow
        proc.wait()

    def workers(self) -> list[psutil.Process]:
        """The worker processes (actors' too) of every live node: the children of its fork server."""
        found = []
        for name in list(self.procs):
            if not self.alive(name):
                continue
            try:
                for child in psutil.Process(self.procs[name].pid).children():
                    if "redis" not in child.name():
                        found.extend(child.children())
            except psutil.NoSuchProcess:
                pass
        self.seen.update(p.pid for p in found)
        return found

    def note_processes(self) -> None:
        for name in list(self.procs):
            try:
                self.seen.update(p.pid for p in psutil.Process(self.procs[name].pid).children(recursive=True))
            except psutil.NoSuchProcess:
                pass

    def stop(self) -> None:
        self.note_processes()
        for name in sorted(self.procs, key=lambda n: n == "head"):  # the head last
            if self.alive(name):
                launch.stop_pid(self.procs[name].pid)
            self.procs[name].wait()


# -- the accounting ----------------------------------------------------------------------------------------

class Tally:
    def __init__(self, lineage: bool, verbose: bool):
        self.lineage, self.verbose = lineage, verbose
        self.lock = threading.Lock()
        self.checked = self.wrong = self.hung = self.lost = 0
        self.per_op: collections.Counter = collections.Counter()
        self.expected: collections.Counter = collections.Counter()
        self.faults: collections.Counter = collections.Counter()
        self.node_deaths = 0  # how many times the third node was killed so far
        self.problems: list[str] = []

    def fault(self, kind: str) -> None:
        with self.lock:
            self.faults[kind] += 1
            if kind == "node":
                self.node_deaths += 1

    def problem(self, kind: str, op: str, text: str) -> None:
        self.problems.append(f"[{kind}] {op}: {text}")
        if len(self.problems) <= 50:
            print(f"soak: {kind.upper()} in {op}: {text}", file=sys.stderr, flush=True)

    def result(self, op: str, got, want) -> None:
        with self.lock:
            self.per_op[op] += 1
            if got == want:
                self.checked += 1
            else:
                self.wrong += 1
                self.problem("wrong", op, f"got {got!r}, expected {want!r}")

    def error(self, op: str, error: BaseException, *, put_object: bool, deaths_before: int) -> None:
        """Classify an operation's error: expected (Ray raises it too), hung, lost, or wrong."""
        with self.lock:
            self.per_op[op] += 1
            root = error
            while isinstance(root, exc.TaskError) and root.cause is not None:
                root = root.cause
            if isinstance(root, exc.GetTimeoutError):
                self.hung += 1
                where = traceback.extract_tb(error.__traceback__)
                line = next((f"line {f.lineno}: {f.line}" for f in reversed(where)
                             if f.filename == __file__ and f.name != "get"), "")
                self.problem("hung", op, f"{type(root).__name__} at {line}: {root}")
            elif isinstance(root, LOSSES):
                if self.lost_counts(put_object, self.node_deaths > deaths_before, root):
                    self.lost += 1
                    self.problem("lost", op, f"{type(root).__name__}: {str(root)[:300]}")
                else:
                    self.expected[f"{type(root).__name__} in {op} (lineage would rebuild it)"] += 1
            elif isinstance(root, EXPECTED):
                self.expected[type(root).__name__] += 1
            else:
                self.wrong += 1
                text = "".join(traceback.format_exception(type(error), error, error.__traceback__))[-1500:]
                self.problem("wrong", op, f"unexpected {type(root).__name__}:\n{text}")

    def lost_counts(self, put_object: bool, node_died: bool, error: BaseException) -> bool:
        """Whether an ObjectLostError is an object Ray would have kept: a put object (it lives on the driver's
        node, the head, never killed) always; with a node's death meanwhile, not what Ray raises too
        (``RAY_LOSES_TOO``), and a task's return only with lineage reconstruction counted (the default;
        ``--no-lineage`` turns it off); any other loss always."""
        if put_object or not node_died:
            return True
        return self.lineage and not isinstance(error, RAY_LOSES_TOO)

    def hang(self, op: str, seconds: float) -> None:
        with self.lock:
            self.hung += 1
            self.problem("hung", op, f"no answer in {seconds:.0f} s")


# -- the operations: each returns nothing; it reports to the tally ------------------------------------------

class Workload:
    def __init__(self, tally: Tally, rng: random.Random, only: list[str] | None = None):
        self.tally, self.rng = tally, rng
        self.lock = threading.Lock()
        self.actors = [Worker.remote() for _ in range(3)]
        self.actor_pids: set[int] = set()
        self.directory = Directory.options(name=NAMED).remote()
        self.ops = [(self.task, 4), (self.nested, 2), (self.actor_call, 3), (self.big_put, 2),
                    (self.big_return, 2), (self.big_to_actor, 1), (self.named, 2), (self.generator, 2),
                    (self.group, 1)]
        if only:
            self.ops = [(op, w) for op, w in self.ops if op.__name__ in only]

    def run_one(self, rng: random.Random) -> None:
        op = rng.choices([o for o, _ in self.ops], weights=[w for _, w in self.ops])[0]
        name = op.__name__
        deaths = self.tally.node_deaths
        put_object = name in ("big_put", "big_to_actor")
        try:
            op(rng, name)
        except Exception as error:  # noqa: BLE001 - every error is classified
            self.tally.error(name, error, put_object=put_object, deaths_before=deaths)

    def get(self, refs):
        return anyray.get(refs, timeout=GET_TIMEOUT)

    def node(self, rng):
        return rng.choice(["head", "b", "c"])

    def task(self, rng, name):
        xs = [rng.randrange(10_000) for _ in range(rng.randrange(1, 20))]
        self.tally.result(name, self.get([square.remote(x) for x in xs]), [x * x for x in xs])

    def nested(self, rng, name):
        n = rng.randrange(1, 8)
        ref = outer.options(resources={f"node_{self.node(rng)}": 1}).remote(n)
        self.tally.result(name, self.get(ref), sum(i * i for i in range(n)))

    def actor_call(self, rng, name):
        i = rng.randrange(len(self.actors))
        actor = self.actors[i]
        xs = [rng.randrange(1000) for _ in range(rng.randrange(1, 6))]
        try:
            got = self.get([actor.mul.remote(x) for x in xs])
        except exc.ActorDiedError:
            with self.lock:  # out of restarts: as a Ray program would, make a new one
                if self.actors[i] is actor:
                    self.actors[i] = Worker.remote()
            raise
        self.actor_pids.update(pid for _, pid in got)
        self.tally.result(name, [v for v, _ in got], [x * 7 for x in xs])

    def big_put(self, rng, name):
        seed = rng.randrange(1 << 30)
        ref = anyray.put(np.random.default_rng(seed).random(BIG))
        where = self.node(rng)
        self.tally.result(name, self.get(digest.options(resources={f"node_{where}": 1}).remote(ref)),
                          expected_digest(seed))

    def big_return(self, rng, name):
        seed = rng.randrange(1 << 30)
        made, read = self.node(rng), self.node(rng)
        ref = make_big.options(resources={f"node_{made}": 1}).remote(seed)
        there = digest.options(resources={f"node_{read}": 1}).remote(ref)
        here = self.get(ref)
        self.tally.result(name, (float(here.sum()), int(here.size), self.get(there)),
                          (*expected_digest(seed), expected_digest(seed)))

    def big_to_actor(self, rng, name):
        seed = rng.randrange(1 << 30)
        ref = anyray.put(np.random.default_rng(seed).random(BIG))
        actor = self.actors[rng.randrange(len(self.actors))]
        value, pid = self.get(actor.digest.remote(ref))
        self.actor_pids.add(pid)
        self.tally.result(name, value, expected_digest(seed)[0])

    def named(self, rng, name):
        x = rng.randrange(1 << 20)
        actor = anyray.get_actor(NAMED)
        value, pid = self.get(actor.echo.remote(x))
        self.actor_pids.add(pid)
        self.tally.result(name, value, x)

    def generator(self, rng, name):
        n = rng.randrange(1, 12)
        stream = count_up.options(num_returns="streaming", resources={f"node_{self.node(rng)}": 1}).remote(n)
        got = [self.get(ref) for ref in stream]
        self.tally.result(name, got, [i * 10 for i in range(n)])

    def group(self, rng, name):
        pg = placement_group([{"CPU": 0.25}, {"CPU": 0.25}], strategy=rng.choice(["PACK", "SPREAD"]))
        try:
            self.get(pg.ready())
            strategy = PlacementGroupSchedulingStrategy(pg, placement_group_bundle_index=rng.randrange(2))
            xs = [rng.randrange(1000) for _ in range(3)]
            refs = [square.options(num_cpus=0.25, scheduling_strategy=strategy).remote(x) for x in xs]
            got = self.get(refs)
            self.tally.result(name, got, [x * x for x in xs])
        finally:
            remove_placement_group(pg)


# -- chaos --------------------------------------------------------------------------------------------------

class Chaos(threading.Thread):
    NODE_DOWN = (3.0, 8.0)  # seconds the third node stays dead before the operator restarts it
    # Seconds Redis stays down. A restarted Redis comes back with its append-only file, leases included, so
    # an outage that, with the nodes' reconnect backoff, outlasts a node's lease (3 heartbeats, 3 s) has the
    # leases lapse when it comes back: every node then counts itself dead and stops (see --redis-down).
    REDIS_DOWN = (0.1, 1.0)
    KINDS = [("worker", 5), ("actor", 3), ("node", 1), ("redis", 1)]

    def __init__(self, cluster: Cluster, workload: Workload, tally: Tally, rng: random.Random, stop: threading.Event,
                 only: list[str] | None = None):
        super().__init__(name="chaos", daemon=True)
        if only:
            self.KINDS = [(k, w) for k, w in self.KINDS if k in only]
        self.cluster, self.workload, self.tally, self.rng, self.stop_event = cluster, workload, tally, rng, stop
        self.node_back_at: float | None = None
        self.redis_down = self.REDIS_DOWN
        self.failure: BaseException | None = None

    def run(self) -> None:
        try:
            while not self.stop_event.wait(self.rng.uniform(1.0, 3.0)):
                if self.revive():
                    continue  # the node just started again is not killed in the same tick
                kind = self.rng.choices([k for k, _ in self.KINDS], weights=[w for _, w in self.KINDS])[0]
                getattr(self, f"kill_{kind}")()
            self.revive(force=True)
        except BaseException as error:  # noqa: BLE001 - reported by the main thread
            self.failure = error
            traceback.print_exc()

    def log(self, text: str) -> None:
        if self.tally.verbose:
            print(f"soak: chaos {time.strftime('%H:%M:%S')} {text}", flush=True)

    def revive(self, force: bool = False) -> bool:
        """Start node c again once its time has come; whether it did."""
        if self.node_back_at is not None and (force or time.monotonic() >= self.node_back_at):
            self.cluster.start_node("c")
            self.node_back_at = None
            self.log("node c started again")
            return True
        return False

    def kill_pid(self, pid: int, kind: str) -> None:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            return
        self.tally.fault(kind)
        self.log(f"killed {kind} pid {pid}")

    def kill_worker(self) -> None:
        workers = self.cluster.workers()
        if workers:
            self.kill_pid(self.rng.choice(workers).pid, "worker")

    def kill_actor(self) -> None:
        live = {p.pid for p in self.cluster.workers()}
        pids = sorted(self.workload.actor_pids & live)  # a pid no longer a worker may be reused: never it
        self.workload.actor_pids.intersection_update(live)
        if pids:
            self.kill_pid(self.rng.choice(pids), "actor")

    def kill_node(self) -> None:
        if self.node_back_at is None and self.cluster.alive("c"):
            self.cluster.kill_node("c")
            self.tally.fault("node")
            self.node_back_at = time.monotonic() + self.rng.uniform(*self.NODE_DOWN)
            self.log("killed node c")

    def kill_redis(self) -> None:
        self.cluster.redis.kill()
        self.tally.fault("redis")
        self.log("killed redis")
        time.sleep(self.rng.uniform(*self.redis_down))
        self.cluster.redis.start()
        self.log("redis started again")


# -- the driver ---------------------------------------------------------------------------------------------

class Runner(threading.Thread):
    """One driver thread: operations one after another, each watched by the watchdog through ``started``."""

    def __init__(self, index: int, workload: Workload, seed: int, until: float):
        super().__init__(name=f"driver-{index}", daemon=True)
        self.workload, self.rng, self.until = workload, random.Random(seed), until
        self.started: float | None = None
        self.reported = False

    def run(self) -> None:
        while time.monotonic() < self.until:
            self.started, self.reported = time.monotonic(), False
            self.workload.run_one(self.rng)
            self.started = None


def watch(runners: list[Runner], tally: Tally) -> None:
    for runner in runners:
        started = runner.started
        if started is not None and not runner.reported and time.monotonic() - started > OP_DEADLINE:
            runner.reported = True
            tally.hang(runner.name, time.monotonic() - started)


def idle_resources(tally: Tally) -> None:
    """With the work done, every CPU of the cluster is free again (within ``OP_DEADLINE``: the restarted node
    registers, the placement groups' removals settle); a CPU still held is a leak, counted as wrong."""
    deadline = time.monotonic() + OP_DEADLINE
    while True:
        total, free = anyray.cluster_resources().get("CPU", 0), anyray.available_resources().get("CPU", 0)
        if total == 3 * NODE_CPUS and abs(free - total) < 1e-6:
            return
        if time.monotonic() > deadline:
            tally.wrong += 1
            tally.problem("wrong", "idle", f"{free} of {total} CPUs free once the work ended "
                          f"({anyray.available_resources()} of {anyray.cluster_resources()})")
            return
        time.sleep(0.5)


def leftovers(pids: set[int]) -> list[str]:
    """The processes of ``pids`` still running (not zombies), and any child of this process."""
    found = []
    for pid in sorted(pids | {p.pid for p in psutil.Process().children(recursive=True)}):
        try:
            proc = psutil.Process(pid)
            if proc.status() != psutil.STATUS_ZOMBIE:
                found.append(f"{pid} {' '.join(proc.cmdline())[:120]}")
        except psutil.NoSuchProcess:
            pass
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="how long the workload runs (default 60)")
    parser.add_argument("--seed", type=int, default=None, help="the random seed (default: a random one, printed)")
    parser.add_argument("--no-lineage", dest="lineage", action="store_false",
                        help="count a task's return lost with its node as an expected error, not as lost")
    parser.add_argument("--ops", help="only these operations (comma-separated names: task, nested, actor_call, "
                        "big_put, big_return, big_to_actor, named, generator, group)")
    parser.add_argument("--faults", help="only these faults (comma-separated: worker, actor, node, redis)")
    parser.add_argument("--redis-down", type=float, default=None, metavar="SECONDS",
                        help=f"keep Redis down this long at each restart (default: {Chaos.REDIS_DOWN[0]:g} to "
                             f"{Chaos.REDIS_DOWN[1]:g} s at random)")
    parser.add_argument("--keep", action="store_true", help="keep the cluster directory (the nodes' logs)")
    parser.add_argument("--verbose", action="store_true", help="print each fault as it is injected")
    args = parser.parse_args()
    seed = args.seed if args.seed is not None else random.randrange(1 << 32)
    print(f"soak: {args.seconds:.0f} s, seed {seed}", flush=True)
    rng = random.Random(seed)
    directory = tempfile.mkdtemp(prefix="anyray-soak-")
    os.chmod(directory, 0o700)
    os.environ["ANYRAY_CLUSTER_DIR"] = directory
    os.environ.pop("ANYRAY_CLUSTER_TOKEN", None)
    redis = Redis(os.path.join(directory, "redis"))
    os.makedirs(redis.directory, mode=0o700)
    cluster = Cluster(directory, redis)
    tally = Tally(args.lineage, args.verbose)
    stop = threading.Event()
    chaos = None
    began = time.monotonic()
    try:
        redis.start()
        for name in ("head", "b", "c"):
            cluster.start_node(name)
        anyray.init(address=cluster.records["head"]["address"])
        workload = Workload(tally, rng, args.ops.split(",") if args.ops else None)
        until = time.monotonic() + args.seconds
        runners = [Runner(i, workload, rng.randrange(1 << 32), until) for i in range(DRIVER_THREADS)]
        chaos = Chaos(cluster, workload, tally, random.Random(rng.randrange(1 << 32)), stop,
                      args.faults.split(",") if args.faults else None)
        if args.redis_down is not None:
            chaos.redis_down = (args.redis_down, args.redis_down)
        for thread in (*runners, chaos):
            thread.start()
        while any(r.is_alive() for r in runners):
            watch(runners, tally)
            if time.monotonic() > until + OP_DEADLINE + 30:
                break  # the watchdog counted what still runs as hung
            time.sleep(0.5)
        stop.set()
        chaos.join(60)
        if chaos.failure is not None:
            tally.wrong += 1
            tally.problem("wrong", "chaos", f"the chaos thread failed: {chaos.failure!r}")
        if not any(r.is_alive() for r in runners):
            idle_resources(tally)
    except Exception as error:  # noqa: BLE001 - the cluster broke down (a node it needs stopped): counted, shown
        tally.wrong += 1
        tally.problem("wrong", "soak", "".join(traceback.format_exception(type(error), error, error.__traceback__)))
    finally:
        stop.set()
        try:
            anyray.shutdown()
        except Exception as error:  # noqa: BLE001 - the stop goes on
            print(f"soak: shutdown raised {error!r}", file=sys.stderr)
        cluster.stop()
        redis.stop()
        pids = set(cluster.seen) | ({redis.proc.pid} if redis.proc else set())
        deadline = time.monotonic() + 20
        left = leftovers(pids)
        while left and time.monotonic() < deadline:
            time.sleep(0.2)
            left = leftovers(pids)
        for line in left:
            pid = int(line.split()[0])
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if args.keep:
            print(f"soak: the cluster directory (its logs) is kept in {directory}")
        else:
            shutil.rmtree(directory, ignore_errors=True)
    elapsed = time.monotonic() - began
    faults = sum(tally.faults.values())
    print(f"soak: ran {elapsed:.0f} s; faults: " + ", ".join(f"{k} {v}" for k, v in sorted(tally.faults.items())))
    print("soak: operations: " + ", ".join(f"{k} {v}" for k, v in sorted(tally.per_op.items())))
    print("soak: expected errors: " + (", ".join(f"{k} {v}" for k, v in sorted(tally.expected.items())) or "none"))
    if left:
        print(f"soak: {len(left)} process(es) outlived the stop (killed now):\n  " + "\n  ".join(left))
    print(f"soak: {faults} faults, {tally.checked} results checked, {tally.wrong} wrong, {tally.hung} hung, "
          f"{tally.lost} lost", flush=True)
    return 1 if (tally.wrong or tally.hung or tally.lost or left) else 0


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    os._exit(code)  # a driver thread stuck in a hung operation must not keep the process alive
