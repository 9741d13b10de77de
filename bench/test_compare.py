"""Unit tests of compare.py's arithmetic and parsing (no tools are run)."""

import sys
import tempfile
import unittest
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import compare  # noqa: E402


class PercentileTest(unittest.TestCase):
    def test_nearest_rank_returns_observed_values(self):
        v = [float(i) for i in range(1, 11)]  # 1..10
        self.assertEqual(compare.percentile(v, 50), 5.0)
        self.assertEqual(compare.percentile(v, 90), 9.0)
        self.assertEqual(compare.percentile(v, 100), 10.0)
        self.assertEqual(compare.percentile([3.0], 90), 3.0)


class TableTest(unittest.TestCase):
    def case(self):
        lb = compare.Result("lockbox", [compare.Sample(2_000_000, 3_000_000)] * 3)
        peer = compare.Result("bwrap", [compare.Sample(4_000_000, 5_000_000)] * 3)
        floor = compare.Result("host spawn floor", [compare.Sample(1_000_000, 1_000_000)])
        gone = compare.Result("crun", status="not available: refused")
        c = compare.Case("echo", "t", "first_ns", "to first output", [])
        c.results = [lb, peer, floor, gone]
        return c

    def test_ratio_is_lockbox_over_peer_and_missing_tools_say_why(self):
        rows = compare.table(self.case())
        bwrap = next(r for r in rows if r.startswith("| bwrap"))
        self.assertIn("| 4.00 ms |", bwrap)
        self.assertIn("| 0.50× | 0.50× |", bwrap)
        floor = next(r for r in rows if r.startswith("| host spawn floor"))
        self.assertTrue(floor.endswith("| — | — |"))  # no ratio against the floor
        crun = next(r for r in rows if r.startswith("| crun"))
        self.assertIn("not available: refused", crun)

    def test_lockbox_split_only_with_create_times(self):
        self.assertEqual(compare.lockbox_split(self.case()), [])


class SdkSectionTest(unittest.TestCase):
    def test_parses_go_benchmark_lines(self):
        text = ("BenchmarkNoopCall-2   \t  383607\t      3290 ns/op\t     328 B/op\t       8 allocs/op\n"
                "BenchmarkFSWriteRead1MiB-2 \t 100\t  10922862 ns/op\t 192.00 MB/s\t 2232706 B/op\t"
                "      99 allocs/op\n")
        with tempfile.NamedTemporaryFile("w", suffix=".txt") as f:
            f.write(text)
            f.flush()
            rows = [r for r in compare.sdk_section(Path(f.name)) if r.startswith("| NoopCall")
                    or r.startswith("| FSWriteRead1MiB")]
        self.assertEqual(len(rows), 2)
        self.assertIn("| 3.3 µs |", rows[0])
        self.assertIn("| 328 | 8 |", rows[0])
        self.assertIn("192.00 MB/s", rows[1])

    def test_reports_a_skip_instead_of_an_empty_table(self):
        with tempfile.NamedTemporaryFile("w", suffix=".txt") as f:
            f.write("--- SKIP: BenchmarkNoopCall\n    engine library not loadable\n")
            f.flush()
            out = "\n".join(compare.sdk_section(Path(f.name)))
        self.assertIn("No figures", out)
        self.assertIn("SKIP", out)


class Issue13SectionTest(unittest.TestCase):
    def test_custom_metrics_targets_and_ratios(self):
        sdk = ("BenchmarkPoolGet-2 \t 100\t 0 ns/op\t 0.004 p50-ms\t 100 B/op\t 2 allocs/op\n"
               "BenchmarkFork100MiB-2 \t 9\t 0 ns/op\t 250.0 first-ms\t 120.5 p50-ms\n"
               "BenchmarkIdlePSS20-2 \t 1\t 0 ns/op\t 0.93 pss-p50-MiB\n")
        xfs = "BenchmarkFork100MiBDiskLayer-2 \t 30\t 0 ns/op\t 210.0 first-ms\t 8.0 p50-ms\n"
        lb = compare.Result("lockbox", [compare.Sample(12_000_000, 20_000_000)] * 3)
        bw = compare.Result("bwrap", [compare.Sample(6_000_000, 7_000_000)] * 3)
        c = compare.Case("echo", "t", "first_ns", "to first output", [])
        c.results = [lb, bw]
        with tempfile.TemporaryDirectory() as d:
            (Path(d) / "sdk.txt").write_text(sdk)
            (Path(d) / "xfs.txt").write_text(xfs)
            out = compare.issue13_section([c], Path(d) / "sdk.txt", Path(d) / "xfs.txt", "xfs")
        row = {r.split(" | ")[0]: r for r in out if r.startswith("| ")}
        cold = next(r for k, r in row.items() if "Cold create" in k)
        self.assertIn("| 12.0 ms | ≤ 1.2× bwrap (not met) | 2.00× |", cold)
        pool = next(r for k, r in row.items() if "Pool.Get" in k)
        self.assertIn("| 0.004 ms | ≤ 1 ms (met) |", pool)
        fork = next(r for k, r in row.items() if "tmpfs layer" in k)
        self.assertIn("| 120.5 ms | < 20 ms (not met) | 20.08× |", fork)
        reflink = next(r for k, r in row.items() if "reflink=1" in k)
        self.assertIn("| 8.0 ms | < 20 ms (met) |", reflink)
        pss = next(r for k, r in row.items() if "PSS" in k)
        self.assertIn("0.93 MiB | ≤ 1 MiB (met)", pss)
        snap = next(r for k, r in row.items() if "Snapshot" in k)
        self.assertIn("not measured", snap)


class TraceTest(unittest.TestCase):
    def test_steps_are_gaps_of_one_sorted_timeline_per_sandbox(self):
        lines = [
            {"id": "a", "who": "engine", "marks": [["engine_launch", 100], ["helper_spawned", 400],
                                                   ["status_read", 2000]]},
            {"id": "a", "who": "helper", "marks": [["helper_main", 500], ["plan_sent", 900],
                                                   ["child_done", 1900]]},
            {"id": "b", "who": "helper", "marks": [["helper_main", 1]]},  # no engine side
        ]
        with tempfile.NamedTemporaryFile("w", suffix=".jsonl") as f:
            f.write("\n".join(__import__("json").dumps(x) for x in lines) + "\nnot json\n")
            f.flush()
            runs = compare.read_trace(Path(f.name))
        self.assertEqual(len(runs), 1)
        self.assertEqual(runs[0], {"helper_spawned": 300, "helper_main": 100, "plan_sent": 400,
                                   "child_done": 1000, "status_read": 100, "launch_total": 1900})

    def test_child_lane_runs_beside_the_helper(self):
        lines = [
            {"id": "a", "who": "engine", "marks": [["engine_launch", 0], ["status_read", 100]]},
            {"id": "a", "who": "helper", "marks": [["plan_sent", 10], ["joined", 50],
                                                   ["go_sent", 51], ["setup_result_read", 90]]},
            {"id": "a", "who": "child", "marks": []},
        ]
        lines[1]["marks"] += [["child_plan_received", 12], ["child_overlay", 40],
                              ["child_go", 55], ["child_done", 80]]
        with tempfile.NamedTemporaryFile("w", suffix=".jsonl") as f:
            f.write("\n".join(__import__("json").dumps(x) for x in lines[:2]) + "\n")
            f.flush()
            r = compare.read_trace(Path(f.name))[0]
        self.assertEqual(r["joined"], 40)  # from plan_sent, not from child_overlay
        self.assertEqual(r["child_overlay"], 28)  # from child_plan_received
        self.assertEqual(r["child_go"], 15)
        self.assertEqual(r["setup_result_read"], 10)  # from child_done, the later of the two
        self.assertEqual(r["launch_total"], 100)

    def test_breakdown_beside_peer_totals(self):
        lines = [{"id": str(i), "who": w, "marks": m} for i in range(3) for w, m in (
            ("engine", [["engine_launch", 0], ["status_read", 4_000_000]]),
            ("helper", [["clone_namespaces", 1_000_000]]))]
        with tempfile.NamedTemporaryFile("w", suffix=".jsonl") as f:
            f.write("\n".join(__import__("json").dumps(x) for x in lines) + "\n")
            f.flush()
            c = compare.Case("echo", "t", "first_ns", "to first output", [])
            c.results = [compare.Result("lockbox", [compare.Sample(10_000_000, 12_000_000,
                                                                   6_000_000)] * 3),
                         compare.Result("bwrap", [compare.Sample(5_000_000, 6_000_000)] * 3)]
            c.trace = Path(f.name)
            out = "\n".join(compare.step_breakdown(c))
        self.assertIn("| `clone_namespaces`: helper: clone", out)
        self.assertIn("| 1.000 ms | 10.0% |", out)
        self.assertIn("| **launch (engine_launch → status_read)** | **4.000 ms** |", out)
        self.assertIn("difference of medians) | 2.000 ms | 20.0% |", out)  # 6 - 4
        self.assertIn("| bwrap, same run: first output | 5.000 ms | Lockbox 2.00× |", out)

    def test_no_breakdown_without_a_trace(self):
        c = compare.Case("echo", "t", "first_ns", "to first output", [])
        c.results = [compare.Result("lockbox", [compare.Sample(1, 2, 1)])]
        self.assertEqual(compare.step_breakdown(c), [])


if __name__ == "__main__":
    unittest.main()
