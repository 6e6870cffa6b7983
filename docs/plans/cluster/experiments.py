"""Tiny Ray experiment for issue #17 research. Prints JSON-ish lines."""
import json
import os
import subprocess
import sys
import time

import ray
from ray.cluster_utils import Cluster

R = {}


def log(k, v):
    R[k] = v
    print(f"{k}: {v}", flush=True)


def descendants(pid):
    out = []
    kids = {}
    for p in os.listdir("/proc"):
        if not p.isdigit():
            continue
        try:
            with open(f"/proc/{p}/stat") as f:
                s = f.read()
            ppid = int(s.rsplit(")", 1)[1].split()[1])
            kids.setdefault(ppid, []).append(int(p))
        except Exception:
            pass
    stack = [pid]
    while stack:
        x = stack.pop()
        for c in kids.get(x, []):
            out.append(c)
            stack.append(c)
    return out


def rss_table(pid=None):
    pid = pid or os.getpid()
    tab = {}
    for p in descendants(pid) + [pid]:
        try:
            with open(f"/proc/{p}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace")
            with open(f"/proc/{p}/status") as f:
                rss = [int(l.split()[1]) for l in f if l.startswith("VmRSS")][0]
        except Exception:
            continue
        if p == pid:
            name = "driver(this process)"
        elif "gcs_server" in cmd:
            name = "gcs_server"
        elif "/raylet " in cmd or cmd.split(" ")[0].endswith("raylet"):
            name = "raylet"
        elif "dashboard/agent.py" in cmd:
            name = "dashboard_agent"
        elif "dashboard.py" in cmd:
            name = "dashboard" + ("(--minimal)" if "--minimal" in cmd else "")
        elif "runtime_env" in cmd and "agent" in cmd:
            name = "runtime_env_agent"
        elif "log_monitor" in cmd:
            name = "log_monitor"
        elif "monitor.py" in cmd:
            name = "autoscaler_monitor"
        elif cmd.startswith("ray::"):
            name = cmd.split(" ")[0]
        elif "default_worker.py" in cmd:
            name = "worker(default_worker.py)"
        else:
            name = cmd[:60]
        t = tab.setdefault(name, [0, 0])
        t[0] += 1
        t[1] += rss // 1024
    return {k: f"n={v[0]} rss={v[1]}MiB" for k, v in sorted(tab.items())}


TMP = "/tmp/ray17tmp"


def part_a():
    t = time.perf_counter()
    ray.init(num_cpus=1, include_dashboard=False, _temp_dir=TMP, log_to_driver=False)
    log("A.ray_init_local_s", round(time.perf_counter() - t, 2))

    @ray.remote
    def f():
        return 1

    t = time.perf_counter()
    ray.get(f.remote())
    log("A.first_task_s(worker start)", round(time.perf_counter() - t, 2))
    time.sleep(2)
    log("A.rss_idle_single_node", rss_table())
    t = time.perf_counter()
    ray.shutdown()
    log("A.shutdown_s", round(time.perf_counter() - t, 2))


@ray.remote(num_gpus=1, max_restarts=0, max_task_retries=0,
            concurrency_groups={"ctl": 1})
class Slot:
    def __init__(self):
        self.progress = {}

    def info(self):
        ctx = ray.get_runtime_context()
        return dict(node=ctx.get_node_id()[:8], gpu_ids=ray.get_gpu_ids(),
                    cvd=os.environ.get("CUDA_VISIBLE_DEVICES"), pid=os.getpid(),
                    assigned=ctx.get_assigned_resources())

    def run(self, job, steps, dt, size=0):
        ctx = ray.get_runtime_context()
        for i in range(steps):
            if ctx.is_canceled():
                self.progress[job] = ("cancelled", i)
                return {"job": job, "cancelled_at": i}
            time.sleep(dt)
            self.progress[job] = ("step", i + 1)
        return {"job": job, "blob": b"x" * size}

    def gen(self, job, steps, dt):
        ctx = ray.get_runtime_context()
        for i in range(steps):
            if ctx.is_canceled():
                yield {"cancelled_at": i}
                return
            time.sleep(dt)
            yield {"step": i + 1}
        yield {"done": True}

    @ray.method(concurrency_group="ctl")
    def get_progress(self, job):
        return self.progress.get(job)


def wait_exc(ref, timeout=60):
    t = time.perf_counter()
    try:
        v = ray.get(ref, timeout=timeout)
        return ("value", str(v)[:80], round(time.perf_counter() - t, 3))
    except Exception as e:  # noqa
        return (type(e).__name__, [c.__name__ for c in type(e).__mro__[:4]],
                round(time.perf_counter() - t, 3))


def part_b():
    sc = {"health_check_period_ms": 500, "health_check_failure_threshold": 3,
          "health_check_timeout_ms": 500, "health_check_initial_delay_ms": 0}
    t = time.perf_counter()
    cluster = Cluster(initialize_head=True, head_node_args=dict(
        num_cpus=0, include_dashboard=False, temp_dir=TMP, _system_config=sc))
    log("B.head_start_s", round(time.perf_counter() - t, 2))
    nodes = []
    for i in range(2):
        t = time.perf_counter()
        nodes.append(cluster.add_node(num_cpus=1, num_gpus=1, resources={"gpu_slot": 1}))
        log(f"B.add_node{i}_s", round(time.perf_counter() - t, 2))
    t = time.perf_counter()
    cluster.connect()
    log("B.connect_s", round(time.perf_counter() - t, 2))
    log("B.cluster_resources", ray.cluster_resources())
    try:
        from ray.util.state import list_nodes
        log("B.state_list_nodes", len(list_nodes()))
    except Exception as e:
        log("B.state_list_nodes_error", f"{type(e).__name__}: {str(e)[:150]}")

    t = time.perf_counter()
    actors = [Slot.remote() for _ in range(2)]
    infos = ray.get([a.info.remote() for a in actors])
    log("B.actor_create_s(2)", round(time.perf_counter() - t, 2))
    log("B.actor_infos", infos)

    # dispatch overhead: trivial round trip
    t = time.perf_counter()
    for _ in range(50):
        ray.get(actors[0].get_progress.remote("none"))
    log("B.actor_call_roundtrip_ms", round((time.perf_counter() - t) / 50 * 1000, 2))

    # progress polling while run busy (concurrency group)
    a = actors[0]
    ref = a.run.remote("p", 20, 0.05)
    time.sleep(0.3)
    lat = []
    seen = []
    for _ in range(5):
        t = time.perf_counter()
        seen.append(ray.get(a.get_progress.remote("p")))
        lat.append((time.perf_counter() - t) * 1000)
        time.sleep(0.05)
    ray.get(ref)
    log("B.progress_poll_ms_while_busy", [round(x, 1) for x in lat])
    log("B.progress_seen", seen)

    # cancel running sync task
    ref = a.run.remote("c", 200, 0.05)
    time.sleep(0.5)
    t = time.perf_counter()
    ray.cancel(ref)
    log("B.cancel_call_ms", round((time.perf_counter() - t) * 1000, 2))
    log("B.cancel_get_result", wait_exc(ref))
    log("B.cancel_actor_state_after", ray.get(a.get_progress.remote("c")))
    log("B.actor_alive_after_cancel", ray.get(a.info.remote())["pid"] == infos[0]["pid"])
    try:
        ray.cancel(a.run.remote("f", 5, 0.05), force=True)
    except Exception as e:
        log("B.cancel_force_actor", f"{type(e).__name__}: {str(e)[:100]}")

    # streaming generator cancel
    g = a.gen.remote("g", 200, 0.05)
    items = [ray.get(next(g)) for _ in range(3)]
    t = time.perf_counter()
    ray.cancel(g)
    rest = []
    try:
        for r in g:
            rest.append(ray.get(r))
        rest.append("iter-ended")
    except Exception as e:
        rest.append(f"{type(e).__name__}")
    log("B.gen_first", items)
    log("B.gen_after_cancel", (rest[-3:], round(time.perf_counter() - t, 3)))

    # cancel a queued (not yet started) task behind a running one
    r1 = a.run.remote("q1", 10, 0.05)
    r2 = a.run.remote("q2", 10, 0.05)
    ray.cancel(r2)
    log("B.cancel_queued", (wait_exc(r1)[0], wait_exc(r2)))

    # large result from worker node to driver
    for size in (30 << 20,):
        t = time.perf_counter()
        v = ray.get(actors[1].run.remote("big", 1, 0.0, size))
        log(f"B.result_{size >> 20}MiB_s", round(time.perf_counter() - t, 3))
        del v

    time.sleep(1)
    log("B.rss_cluster_2_nodes_2_actors", rss_table())

    # node join
    t = time.perf_counter()
    n3 = cluster.add_node(num_cpus=1, num_gpus=1, resources={"gpu_slot": 1})
    log("B.add_node3_s", round(time.perf_counter() - t, 2))
    alive = [n for n in ray.nodes() if n["Alive"]]
    log("B.ray_nodes_alive", [(n["NodeID"][:8], n["Resources"].get("GPU")) for n in alive])
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy
    nid = n3.node_id
    a3 = Slot.options(scheduling_strategy=NodeAffinitySchedulingStrategy(nid, soft=False)).remote()
    log("B.affinity_actor_node_ok", ray.get(a3.info.remote())["node"] == nid[:8])

    # node death, hard kill (SIGKILL of all node processes)
    victim_node = nodes[1]
    ref = actors[1].run.remote("d", 600, 0.1)
    time.sleep(1.0)
    t0 = time.perf_counter()
    cluster.remove_node(victim_node, allow_graceful=False)
    t_removed = time.perf_counter() - t0
    res = wait_exc(ref)
    log("B.hard_remove_node_call_s", round(t_removed, 3))
    log("B.hard_node_loss_get", res)
    t = time.perf_counter()
    vid = victim_node.node_id
    while True:
        st = [n for n in ray.nodes() if n["NodeID"] == vid]
        if st and not st[0]["Alive"]:
            break
        if time.perf_counter() - t > 60:
            break
        time.sleep(0.1)
    log("B.hard_node_marked_dead_after_get_s", round(time.perf_counter() - t, 3))
    log("B.call_dead_actor", wait_exc(actors[1].info.remote()))

    # graceful removal (SIGTERM first) of node 3
    ref = a3.run.remote("d3", 600, 0.1)
    time.sleep(1.0)
    t0 = time.perf_counter()
    cluster.remove_node(n3, allow_graceful=True)
    log("B.graceful_remove_node_call_s", round(time.perf_counter() - t0, 3))
    log("B.graceful_node_loss_get", wait_exc(ref))

    # driver (owner) death -> non-detached actor dies
    code = (
        "import ray,time,os\n"
        f"ray.init(address='{cluster.address}', namespace='x', log_to_driver=False)\n"
        "@ray.remote(num_cpus=0)\n"
        "class P:\n"
        "    def sleep(self):\n"
        "        time.sleep(100)\n"
        "p = P.options(name='probe').remote()\n"
        "p.sleep.remote(); time.sleep(2); print('ok', flush=True); os._exit(0)\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
    t = time.perf_counter()
    gone = None
    while time.perf_counter() - t < 60:
        try:
            ray.get_actor("probe", namespace="x")
        except ValueError:
            gone = round(time.perf_counter() - t, 3)
            break
        time.sleep(0.1)
    log("B.owner_exit_actor_gone_s", gone)

    t = time.perf_counter()
    ray.shutdown()
    cluster.shutdown()
    log("B.shutdown_s", round(time.perf_counter() - t, 2))


if __name__ == "__main__":
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    part_a()
    part_b()
    with open("/tmp/ray17exp/results.json", "w") as f:
        json.dump(R, f, indent=1, default=str)
