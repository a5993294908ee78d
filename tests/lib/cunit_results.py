#!/usr/bin/env python3
"""Reads iscsi-test-cu's results (CUnit's automated XML, written by -x).

  cunit_results.py RESULTS.xml
      prints one line per test, "SUITE.TEST PASS" or "SUITE.TEST FAIL"
      (a test with any failed assertion fails; a suite whose set-up failed
      counts every one of its tests as failed).
  cunit_results.py --compare REFERENCE TIDEMARK
      compares two such listings: prints both pass counts and every test
      whose verdict differs; exits 1 if a test the reference passes fails
      on Tidemark (or is missing from its run).
  cunit_results.py --worse-suites REFERENCE TIDEMARK
      prints the suites of those tests, one per line.

The XML is read with regular expressions, not a parser: CUnit does not
escape the assertion text it copies into it.
"""
import re
import sys

SUITE = re.compile(r"<SUITE_NAME>\s*(.*?)\s*</SUITE_NAME>", re.S)
RECORD = re.compile(r"<CUNIT_RUN_TEST_(SUCCESS|FAILURE)>\s*<TEST_NAME>\s*(.*?)\s*</TEST_NAME>", re.S)
SUITE_FAILED = re.compile(r"<CUNIT_RUN_SUITE_FAILURE>\s*<SUITE_NAME>\s*(.*?)\s*</SUITE_NAME>", re.S)


def verdicts(path):
    text = open(path, errors="replace").read()
    out = {}
    # Each suite's records follow its name, up to the next suite's name.
    names = list(SUITE.finditer(text))
    for i, m in enumerate(names):
        end = names[i + 1].start() if i + 1 < len(names) else len(text)
        for kind, test in RECORD.findall(text[m.end():end]):
            key = f"{m.group(1)}.{test}"
            if kind == "FAILURE" or out.get(key) == "FAIL":
                out[key] = "FAIL"
            else:
                out[key] = "PASS"
    for suite in SUITE_FAILED.findall(text):
        out[f"{suite}.(suite set-up)"] = "FAIL"
    return out


def read_listing(path):
    out = {}
    for line in open(path):
        name, _, verdict = line.strip().rpartition(" ")
        if name:
            out[name] = verdict
    return out


def worse(ref, ours):
    """The tests the reference passes and Tidemark does not (or lacks)."""
    return [name for name in sorted(ref) if ref[name] == "PASS" and ours.get(name, "absent") != "PASS"]


def compare(reference_path, tidemark_path):
    ref, ours = read_listing(reference_path), read_listing(tidemark_path)
    passed = lambda listing: sum(1 for v in listing.values() if v == "PASS")
    print(f"reference (LIO fileio): {passed(ref)} of {len(ref)} tests pass")
    print(f"Tidemark LUN:           {passed(ours)} of {len(ours)} tests pass")
    for name in sorted(set(ref) | set(ours)):
        a, b = ref.get(name, "absent"), ours.get(name, "absent")
        if a != b:
            print(f"  differs: {name}: reference {a}, Tidemark {b}")
    failing = worse(ref, ours)
    if failing:
        print(f"{len(failing)} tests pass on the reference and not on Tidemark: {', '.join(failing)}")
        return 1
    print("every test the reference passes passes on Tidemark")
    return 0


def main(argv):
    if len(argv) == 4 and argv[1] == "--compare":
        return compare(argv[2], argv[3])
    if len(argv) == 4 and argv[1] == "--worse-suites":
        failing = worse(read_listing(argv[2]), read_listing(argv[3]))
        print("\n".join(sorted({name.split(".", 1)[0] for name in failing})))
        return 0
    if len(argv) == 2:
        results = verdicts(argv[1])
        if not results:
            print(f"{argv[1]}: no test results in it", file=sys.stderr)
            return 1
        for name in sorted(results):
            print(f"{name} {results[name]}")
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
