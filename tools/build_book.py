"""Execute the book's notebooks into book/ (never into nbs/) and make them readable for Jupyter Book.

Library chapters come from nbs/*.ipynb and are executed with papermill (cwd nbs/) into book/chapters/. Experiment
notebooks come from nbs/experiments/ and are executed with the profile and device as parameters into book/experiments/,
and the front page, book/intro, from nbs/experiments/intro.ipynb; `train_eval` runs once per row of the profile, into
book/experiments/runs/<nn>-<row>.ipynb, before the others. papermill's output is kept under .cache/executed/ and reused while
its notebook, parameters and the package are unchanged; each build then presents it anew (`present`): nbdev directives
become what myst-nb understands (`#| hide` and `#| default_exp` cells get the `remove-cell` tag, `#| echo: false` gives
`remove-input`, `#| output: false` gives `remove-output`, and every `#|` line is removed from the source shown to
readers); the code of an experiment page goes behind a toggle (`hide-input`), so that the page leads with its results,
while library chapters keep their code in view, since they teach it; and papermill's parameter cells give way to one
line, the parameters and the command that reruns the page (a chapter without parameters gets the command at its end).

The notebooks run `--workers` at a time (default: one per core, at most four), each kernel with cores / workers compute
threads, so that the build never runs more threads than cores: first the row pages, whose tasks write the records,
then everything else, which only reads them.

Each worker has a zygote: a process that has imported torch and the package once and forks a fresh IPython kernel for
each notebook (`ForkingKernelManager`), so that no kernel spends seconds importing them; every notebook still runs top
to bottom in a kernel of its own, as `papermill` alone would run it. Where a worker's zygote failed to start, or could
not start single-threaded, its kernels start as subprocesses.
"""
import argparse, hashlib, json, os, re, shlex, shutil, signal, socket, subprocess, sys, tempfile, threading, time, traceback, uuid
import multiprocessing
from multiprocessing.connection import Connection
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import nbformat
import papermill as pm
import yaml
from jupyter_client.manager import AsyncKernelManager

ROOT = Path(__file__).resolve().parents[1]
EXECUTED = ROOT / '.cache' / 'executed'
DIRECTIVE = re.compile(r'^\s*#\|\s*([\w-]+)\s*:?\s*(.*?)\s*$')
TAGS = {'hide': 'remove-cell', 'default_exp': 'remove-cell'}
OPTION_TAGS = {('echo', 'false'): 'remove-input', ('output', 'false'): 'remove-output'}


def directives(source: str) -> list[tuple[str, str]]:
    "The (name, value) of each `#|` directive line of a cell's source."
    return [(m[1], m[2].lower()) for line in source.splitlines() if (m := DIRECTIVE.match(line))]


def strip_directives(nb) -> None:
    "Turn nbdev directives into myst-nb tags and remove them from the code readers see, in place."
    for cell in nb.cells:
        if cell.cell_type != 'code': continue
        found = directives(cell.source)
        tags = set(cell.metadata.get('tags', []))
        tags |= {TAGS[name] for name, _ in found if name in TAGS}
        tags |= {OPTION_TAGS[d] for d in found if d in OPTION_TAGS}
        cell.source = '\n'.join(l for l in cell.source.splitlines() if not DIRECTIVE.match(l)).strip('\n')
        if not cell.source.strip() and not cell.get('outputs'): tags.add('remove-cell')
        if tags: cell.metadata['tags'] = sorted(tags)


def toc_files() -> list[str]:
    "Every file the table of contents names, as paths relative to the repository root, without suffix."
    def walk(node):
        if isinstance(node, dict):
            if 'file' in node: yield node['file']
            if 'root' in node: yield node['root']
            for v in node.values(): yield from walk(v)
        elif isinstance(node, list):
            for v in node: yield from walk(v)
    return list(dict.fromkeys(walk(yaml.safe_load((ROOT / '_toc.yml').read_text()))))


def package_digest() -> str:
    h = hashlib.sha256()
    for f in sorted((ROOT / 'fgr').glob('*.py')): h.update(f.read_bytes())
    return h.hexdigest()


def rerun_line(src: Path, dst: Path, parameters: dict) -> str:
    "One Markdown line: the page's parameters and the papermill command, from the repository root, that reruns it."
    command = f"cd {src.parent.relative_to(ROOT)} && papermill {src.name} /tmp/{dst.name}" + \
        ''.join(f" -p {k} {shlex.quote(str(v))}" for k, v in parameters.items())
    shown = ' · '.join(f"`{k} = {v!r}`" for k, v in parameters.items())
    return (f"Parameters: {shown}. " if parameters else '') + f"Rerun: `{command}`"


def present(nb, src: Path, dst: Path, parameters: dict) -> None:
    "Make papermill's output of `src` readable as the page `dst`, in place (see the module's docstring)."
    strip_directives(nb)
    experiment = src.parent != ROOT / 'nbs'
    at = len(nb.cells)
    for i, cell in enumerate(nb.cells):
        tags = set(cell.metadata.get('tags', []))
        if tags & {'parameters', 'injected-parameters'}:
            at = min(at, i)
            tags.add('remove-cell')
        elif experiment and cell.cell_type == 'code' and not tags & {'remove-cell', 'remove-input'}:
            tags.add('hide-input')
        if tags: cell.metadata['tags'] = sorted(tags)
    nb.cells.insert(at, nbformat.v4.new_markdown_cell(rerun_line(src, dst, parameters)))
    meta = nb.metadata.get('papermill', {})              # papermill writes the build machine's absolute paths here
    meta.update(input_path=str(src.relative_to(ROOT)), output_path=str(dst.relative_to(ROOT)))


# What every notebook imports first. A kernel forked from a process that has imported them starts without spending
# seconds on it: papermill ran an empty notebook in 2.5-2.9 s here, and one that imports these in 7.8-10.1 s.
PRELOAD = ('torch', 'torch._dynamo', 'fgr.experiments', 'fgr.evaluate', 'fgr.train', 'fgr.packed_train', 'fgr.deformations',
           'fgr.theory', 'ipykernel.kernelapp')      # not matplotlib: the kernel chooses its backend when it starts


def zygote(requests) -> None:
    "Import PRELOAD, then fork a kernel for each (argv, cwd, env) received on `requests` and send back its pid; stop at EOF."
    import importlib
    for name in PRELOAD: importlib.import_module(name)
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)          # kernels are reaped as they end
    requests.send(threading.active_count() == 1)           # only a single-threaded process can be forked safely
    while True:
        try: argv, cwd, env = requests.recv()
        except EOFError: return
        pid = os.fork()
        if pid: requests.send(pid); continue
        code = 1
        try:                                                # the kernel: never returns
            requests.close()
            os.setsid()
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)   # its own subprocesses must be waited for
            os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
            os.chdir(cwd)
            os.environ.clear(); os.environ.update(env)
            from ipykernel.kernelapp import launch_new_instance
            launch_new_instance(argv=argv[3:] + [f'--IPKernelApp.parent_handle={os.getppid()}'])   # it exits if the zygote does
            code = 0
        except SystemExit as e: code = e.code if isinstance(e.code, int) else 0
        except BaseException: traceback.print_exc()
        finally: os._exit(code)


class Forked:
    "What jupyter_client's LocalProvisioner uses of `subprocess.Popen`, for a kernel the zygote forked (so not our child)."
    stdin = stdout = stderr = None
    def __init__(self, pid: int): self.pid, self.returncode = pid, None
    def poll(self):
        if self.returncode is None:
            try: os.kill(self.pid, 0)
            except ProcessLookupError: self.returncode = 0      # its exit status went to the zygote
        return self.returncode
    def wait(self, timeout=None):
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            if deadline is not None and time.monotonic() > deadline: raise TimeoutError(f"kernel {self.pid} still running")
            time.sleep(0.05)
        return self.returncode
    def send_signal(self, signum):
        try: os.kill(self.pid, signum)
        except ProcessLookupError: pass
    def kill(self): self.send_signal(signal.SIGKILL)
    def terminate(self): self.send_signal(signal.SIGTERM)


ZYGOTE = None      # this build worker's connection to its zygote, if it has one


class ForkingKernelManager(AsyncKernelManager):
    """Starts each IPython kernel by forking it from this worker's zygote (jupyter_client's override point for launching).

    Its kernels listen on Unix sockets named after the kernel, not on TCP ports: a port one worker had chosen (found
    free, then let go) could be taken before its kernel bound it, and the kernel died before replying (CI, 8add42f)."""
    def __init__(self, **kw):
        super().__init__(transport='ipc', **kw)
        self.ip = os.path.join(tempfile.gettempdir(), f'fgr-kernel-{uuid.uuid4().hex}')   # its sockets: <ip>-1 to <ip>-5
    async def _async_launch_kernel(self, kernel_cmd, **kw):
        if ZYGOTE is None or kernel_cmd[1:3] != ['-m', 'ipykernel_launcher']: return await super()._async_launch_kernel(kernel_cmd, **kw)
        ZYGOTE.send((kernel_cmd, str(kw.get('cwd') or os.getcwd()), dict(kw.get('env') or os.environ)))
        pid = ZYGOTE.recv()
        p = self.provisioner
        p.process, p.pid, p.pgid, p.cwd = Forked(pid), pid, pid, kw.get('cwd')
        self._reconcile_connection_info(p.connection_info)


def start_zygote() -> None:
    "Give this build worker a zygote (a ProcessPoolExecutor initializer); without one, kernels start as subprocesses."
    global ZYGOTE
    ours, theirs = socket.socketpair()     # a plain process, not multiprocessing's: its kernels must look like one to their code
    subprocess.Popen([sys.executable, __file__, '--zygote', str(theirs.fileno())], pass_fds=[theirs.fileno()])
    theirs.close()
    conn = Connection(ours.detach())       # the zygote reads EOF, and ends, when this worker does
    try: forkable = conn.recv()
    except EOFError: forkable = False      # it failed to start (its traceback is in the log): kernels as subprocesses
    if forkable: ZYGOTE = conn


def execute_chapter(src: Path, dst: Path, parameters: dict, digest: str) -> bool:
    "Run `src` unless .cache/executed holds a run of the same source, parameters and package, then present it as `dst`; True if run."
    key = hashlib.sha256(src.read_bytes() + json.dumps(parameters, sort_keys=True).encode() + digest.encode()).hexdigest()
    raw = EXECUTED / dst.relative_to(ROOT)
    ran = not (raw.exists() and nbformat.read(raw, as_version=4).metadata.get('fgr_build_key') == key)
    if ran:
        raw.parent.mkdir(parents=True, exist_ok=True)
        tmp = raw.with_suffix('.running.ipynb')
        pm.execute_notebook(str(src), str(tmp), parameters=parameters, cwd=str(src.parent), kernel_name='python3',
                            progress_bar=False, report_mode=False, kernel_manager_class=ForkingKernelManager)
        nb = nbformat.read(tmp, as_version=4)
        nb.metadata['fgr_build_key'] = key
        nbformat.write(nb, tmp)
        tmp.replace(raw)
    nb = nbformat.read(raw, as_version=4)
    present(nb, src, dst, parameters)
    dst.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, dst)
    return ran


def run_job(job: tuple, digest: str) -> None:
    "`execute_chapter` for one (source, page, parameters) job, in a worker process; says what it did."
    src, dst, parameters = job
    ran = execute_chapter(src, dst, parameters, digest)
    print(f"{'executed' if ran else 'up to date'}: {src.relative_to(ROOT)} {parameters or ''} -> {dst.relative_to(ROOT)}", flush=True)


def remove_stale_rows(folder: Path, keep: list, rendered: Path) -> list[Path]:
    "Remove the row pages in `folder` not in `keep` (rows of another profile) and, if any, the rendered book `rendered`, which Sphinx would keep them in."
    stale = [f for f in folder.glob('*.ipynb') if f not in keep]
    for f in stale: f.unlink()
    if stale and rendered.exists():
        shutil.rmtree(rendered)
        print(f"build_book: {len(stale)} row pages of another profile removed, and the rendered book with them")
    return stale


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--profile', default='mini', help='experiment profile: tiny, mini or paper')
    p.add_argument('--device', default='cpu', help='device for experiment notebooks: cpu or cuda')
    p.add_argument('--workers', type=int, default=min(4, len(os.sched_getaffinity(0))), help='notebooks run at once (default: one per core, at most 4)')
    args = p.parse_args(argv)
    if args.workers < 1: sys.exit(f"--workers must be at least 1, got {args.workers}")
    threads = str(max(1, len(os.sched_getaffinity(0)) // args.workers))
    os.environ.update(OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads)   # the kernels inherit it: never more threads than cores
    from fgr.experiments import get_profile, row_id
    digest, profile = package_digest(), get_profile(args.profile)
    params = dict(profile=profile.name, device=args.device)
    jobs = [(ROOT / 'nbs' / 'experiments' / 'train_eval.ipynb', ROOT / 'book' / 'experiments' / 'runs' / f"{i:02d}-{row_id(r)}.ipynb",
             dict(params, row=row_id(r))) for i, r in enumerate(profile.rows, 1)]   # numbered: the sidebar lists them in the profile's order
    for name in toc_files():
        if '*' in name: continue                         # the runs glob: its pages are the train_eval jobs above
        target = ROOT / (name if name.endswith('.ipynb') else name + '.ipynb')
        if target.parent == ROOT / 'book' / 'chapters': jobs.append((ROOT / 'nbs' / target.name, target, {}))
        elif target.parent in (ROOT / 'book' / 'experiments', ROOT / 'book'):     # the front page reads the records too
            jobs.append((ROOT / 'nbs' / 'experiments' / target.name, target, params))
    remove_stale_rows(ROOT / 'book' / 'experiments' / 'runs', [dst for _, dst, _ in jobs], ROOT / 'book' / '_build')
    for src, dst, _ in jobs:
        if not src.exists(): sys.exit(f"_toc.yml names {dst.relative_to(ROOT)}, but there is no notebook {src}")
    rows = len(profile.rows)
    with ProcessPoolExecutor(args.workers, mp_context=multiprocessing.get_context('spawn'), initializer=start_zygote) as pool:   # processes: papermill changes the cwd
        for phase in (jobs[:rows], jobs[rows:]):          # the row pages write the records the other pages read
            list(pool.map(run_job, phase, [digest] * len(phase)))   # re-raises the first failure


if __name__ == '__main__':
    if sys.argv[1:2] == ['--zygote']: zygote(Connection(int(sys.argv[2])))   # started by start_zygote
    else: main()
