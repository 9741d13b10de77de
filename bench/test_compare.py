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


if __name__ == "__main__":
    unittest.main()
