"""The test suite's zygote runs a script as a fresh `python SCRIPT ARGS` process would (tests/zygote.py)."""
import json
import subprocess
import sys

import zygote

SCRIPT = '''
import atexit, json, os, sys, threading, time
atexit.register(lambda: print("atexit ran", flush=True))
def late():
    time.sleep(0.2)
    print("thread joined", flush=True)
threading.Thread(target=late).start()
print(json.dumps({"ppid": os.getppid(), "argv": sys.argv, "cwd": os.getcwd(), "path0": sys.path[0], "name": __name__,
                  "env": os.environ.get("T2T_ZYGOTE_PROBE")}))
print("to stderr", file=sys.stderr)
sys.exit(int(sys.argv[1]))
'''


def _outcome(proc):
    lines = proc.stdout.splitlines()
    probe = json.loads(lines[0])
    probe.pop("ppid")
    return proc.returncode, probe, lines[1:], proc.stderr


def _parent(proc) -> int:
    return json.loads(proc.stdout.splitlines()[0])["ppid"]


def test_a_forked_run_is_what_a_fresh_process_gives(tmp_path, monkeypatch):
    script = tmp_path / "probe.py"
    script.write_text(SCRIPT)
    work = tmp_path / "work"
    work.mkdir()
    fresh = subprocess.run([sys.executable, str(script), "3", "x y"], capture_output=True, text=True, cwd=work,
                           timeout=120)
    forked = zygote.run_script([script, "3", "x y"], cwd=str(work), timeout=120)
    assert _parent(forked) == zygote._server[0].pid  # forked from the zygote, not started anew
    assert _outcome(forked) == _outcome(fresh)
    code, probe, tail, err = _outcome(forked)
    assert code == 3 and probe["name"] == "__main__" and probe["path0"] == str(tmp_path)
    assert tail == ["thread joined", "atexit ran"] and err == "to stderr\n"
    # A test that changed the environment gets a real process (the zygote's imports saw the old one).
    monkeypatch.setenv("T2T_ZYGOTE_PROBE", "set")
    changed = zygote.run_script([script, "0"], cwd=str(work), timeout=120)
    assert _outcome(changed)[1]["env"] == "set" and _parent(changed) != zygote._server[0].pid
