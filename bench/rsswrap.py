"""Run the bpfdeploy CLI in this process and record peak RSS: its own and each child's.

    python rsswrap.py OUT.json -- <bpfdeploy arguments>

bpfdeploy starts every external process through ``subprocess`` (bpfdeploy/kernel/runner.py);
``Popen._try_wait`` is replaced by one that reaps with ``os.wait4``, which returns the child's
own rusage, so each child's ``ru_maxrss`` is kept with its argv. At exit, OUT.json gets
``self_maxrss_kb`` (getrusage(RUSAGE_SELF): this process, which is bpfdeploy) and every child.
Only used for the instrumented (untimed) runs. Each child is started under /usr/bin/time
when it is installed (see below), so bpfdeploy sees the same output and exit codes.
"""

import atexit
import json
import os
import resource
import runpy
import subprocess
import sys

out_path = sys.argv[1]
assert sys.argv[2] == "--"
sys.argv = ["bpfdeploy", *sys.argv[3:]]
children = []


def _try_wait(self, wait_flags):
    try:
        pid, sts, ru = os.wait4(self.pid, wait_flags)
    except ChildProcessError:
        return (self.pid, 0)
    if pid:
        argv = self.args if isinstance(self.args, (list, tuple)) else [str(self.args)]
        children.append({"argv": [str(a) for a in argv], "maxrss_kb": ru.ru_maxrss})
    return (pid, sts)


subprocess.Popen._try_wait = _try_wait

# wait4's ru_maxrss of a child is never below the RSS its parent had when it forked (Linux
# carries the high-water mark over fork and execve), so a child's own peak is read by
# starting it under GNU time (`time -f %M`, a process of about 2 MB) when time is installed.
TIME = "/usr/bin/time" if os.access("/usr/bin/time", os.X_OK) else None
timed = []  # (argv, file that time writes the peak RSS in kB to)
_orig_init = subprocess.Popen.__init__


def _init(self, args, *a, **kw):
    if TIME and isinstance(args, (list, tuple)):
        rss_file = f"{out_path}.child{len(timed)}"
        timed.append(([str(x) for x in args], rss_file))
        args = [TIME, "-f", "%M", "-o", rss_file, *args]
    _orig_init(self, args, *a, **kw)


subprocess.Popen.__init__ = _init


def _dump():
    kids = children
    if TIME:
        kids = []
        for argv, rss_file in timed:
            try:
                with open(rss_file) as fh:
                    kb = int(fh.read().split()[-1])
                os.unlink(rss_file)
            except (OSError, ValueError, IndexError):
                kb = None
            kids.append({"argv": argv, "maxrss_kb": kb})
    with open(out_path, "w") as fh:
        json.dump({"self_maxrss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                   "children": kids, "child_rss_from": "GNU time -f %M" if TIME else
                   "wait4 (an upper bound: includes bpfdeploy's RSS at fork)"}, fh)


atexit.register(_dump)
runpy.run_module("bpfdeploy.cli", run_name="__main__", alter_sys=True)
