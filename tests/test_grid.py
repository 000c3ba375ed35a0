"""fgr.grid: the local engine against rows run one after another, concurrent launches, a diverging row, bad input; and Ray.

Every grid here runs tiny models on the offline CIFAR-10 (skipped without it, except under CI=true) in a private runs
directory, with one compute thread per worker process and never more workers than cores."""
import dataclasses, json, os, signal, subprocess, sys, time
from pathlib import Path
import pytest
import torch

from conftest import cifar_or_skip
from fgr.experiments import FAST_ATTACKS, find_row, get_profile, page_evaluations, row_config
from fgr.train import run_dir

REPO = Path(__file__).resolve().parents[1]
ROWS = ['cifar10-vgg11-standard', 'cifar10-vgg11-fgr-700', 'cifar10-vgg11-igr-5000']
CORES = len(os.sched_getaffinity(0))
# What the profiles written here evaluate: little of everything, so that a task's evaluations take seconds.
SMALL = dict(width=1 / 16, test_limit=64, eval_images=16, figure2_epsilons=[], large_epsilons=[], figure2_cs=[], figure2_images=8, unseen_images=8,
             rotation_levels=[[30., 3.]], elastic_px=[1.], adef_budgets_px=[1.],
             attack_settings={**FAST_ATTACKS, 'ob': dict(iterations=2), 'gf': dict(iterations=2, population=2)})


@pytest.fixture(autouse=True)
def _data():
    cifar_or_skip('cifar10', 'test', n=1)


@pytest.fixture(scope='module')
def small(tmp_path_factory) -> str:
    "The tiny profile's three ROWS, trained as tiny trains them and evaluated with every page's evaluations, on fewer images."
    cifar_or_skip('cifar10', 'test', n=1)                     # module-scoped: before the autouse check above
    path = tmp_path_factory.mktemp('profiles') / 'small.json'
    rows = [list(find_row(get_profile('tiny'), r)) for r in ROWS]
    path.write_text(json.dumps(dict(name='small', rows=rows, epochs=1, milestones=[], train_limit=512, lam_warmup_epochs=0.5, **SMALL)))
    return str(path)


@pytest.fixture(scope='module')
def serial(small, tmp_path_factory) -> Path:
    "The ROWS of `small` run one after another by one worker: what the other engines must reproduce."
    runs = tmp_path_factory.mktemp('serial')
    out = grid(runs, '--profile', small, '--rows', *ROWS, '--workers', '1', '--threads', '1')
    assert out.returncode == 0, out.stderr
    return runs


def grid(runs: Path, *args, wait=True):
    cmd = [sys.executable, '-m', 'fgr.grid', '--runs-dir', str(runs), '--quiet', *args]
    env = dict(os.environ, OMP_NUM_THREADS='1', MKL_NUM_THREADS='1', PYTHONPATH=str(REPO))
    if not wait: return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=REPO)
    return subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO, timeout=900)


def run_folder(runs: Path, profile: str, row: str) -> Path:
    cfg = dataclasses.replace(row_config(get_profile(profile), find_row(get_profile(profile), row)), runs_dir=str(runs))
    return run_dir(cfg)


def same_run(a: Path, b: Path):
    wa, wb = (torch.load(p / 'checkpoint.pt', map_location='cpu', weights_only=True)['model'] for p in (a, b))
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    ra, rb = (json.loads((p / 'record.json').read_text()) for p in (a, b))
    strip = lambda h: [{k: v for k, v in e.items() if k != 'seconds'} for e in h]
    assert strip(ra['metrics'].pop('history')) == strip(rb['metrics'].pop('history'))
    assert ra['metrics'] == rb['metrics'] and ra['config_hash'] == rb['config_hash']
    result = lambda r: {k: v for k, v in r.items() if k not in ('seconds', 'finished', 'run_dir', 'config', 'provenance')}   # what was measured (the run's hash is 'run')
    evals = lambda p: {f.name: result(json.loads(f.read_text())) for f in (p / 'eval').glob('*.json')}
    assert evals(a) == evals(b) and {f.split('-')[0] for f in evals(a)} >= {'clean', 'surface', 'theory'}


def test_two_local_workers_give_the_runs_of_one_after_another(tmp_path, small, serial):
    parallel = grid(tmp_path / 'parallel', '--profile', small, '--rows', *ROWS, '--workers', str(min(2, CORES)), '--threads', '1')
    assert parallel.returncode == 0, parallel.stderr
    evaluations = {json.dumps(e, sort_keys=True) for e in page_evaluations(get_profile(small))}   # each is one record
    for row in ROWS:
        assert f"{row}" in parallel.stdout and 'done' in parallel.stdout
        same_run(run_folder(tmp_path / 'parallel', small, row), run_folder(serial, small, row))
        extra = 2 + row.endswith('standard')             # Figure 3, theory, and for Standard the front page's picture
        assert len(list((run_folder(tmp_path / 'parallel', small, row) / 'eval').glob('*.json'))) == len(evaluations) + extra   # all the pages read
    assert not list((tmp_path / 'parallel').rglob('*.lock')), "a row's lock outlived its task"


def test_subprocess_tasks_give_the_runs_of_forked_ones(tmp_path, monkeypatch, small, serial):
    "Where tasks are not forked (on a GPU, or called from a Jupyter kernel) each is a `python -m fgr.grid --task` subprocess: the same run."
    from fgr.grid import run_local
    monkeypatch.setenv('FGR_RUNS', str(tmp_path / 'spawned'))
    (result,) = run_local(small, ROWS[:1], workers=1, threads=1, progress=False, fork=False)
    assert result['status'] == 'done', result
    same_run(run_folder(tmp_path / 'spawned', small, ROWS[0]), run_folder(serial, small, ROWS[0]))
    with pytest.raises(ValueError, match='cannot be forked'): run_local(small, ROWS[:1], device='cuda', fork=True)


def test_two_launches_at_once_train_every_row_exactly_once(tmp_path, small):
    runs = tmp_path / 'runs'
    first, second = (grid(runs, '--profile', small, '--rows', *ROWS[:2], '--workers', '1', '--threads', '1', wait=False) for _ in range(2))
    assert first.wait(600) == 0 and second.wait(600) == 0, first.stderr.read() + second.stderr.read()
    logs = [p.read_text() for p in (runs / 'grid-logs' / 'small').glob('*/*.log')]
    assert len(logs) == 4
    for row in ROWS[:2]:
        mine = [l for l, p in zip(logs, (runs / 'grid-logs' / 'small').glob('*/*.log')) if p.stem == row]
        assert sum('epoch   1/1' in l for l in mine) == 1 and sum('reusing the finished run' in l for l in mine) == 1, mine


def test_a_diverging_row_fails_alone_naming_row_epoch_and_step(tmp_path):
    profile = tmp_path / 'diverge.json'
    profile.write_text(json.dumps(dict(name='diverge', rows=[['cifar10', 'vgg11', 'standard', None], ['cifar10', 'vgg11', 'fgr', 1e300]],
                                       epochs=1, milestones=[], train_limit=512, **SMALL)))
    out = grid(tmp_path / 'runs', '--profile', str(profile), '--workers', '1', '--threads', '1')
    assert out.returncode == 1
    line = next(l for l in out.stdout.splitlines() if l.startswith('cifar10-vgg11-fgr-1e+300'))
    assert 'failed' in line and 'non-finite loss' in line and 'in epoch 1, step' in line, out.stdout
    assert next(l for l in out.stdout.splitlines() if l.startswith('cifar10-vgg11-standard ')).split()[1] == 'done'
    assert '1 of 2 tasks failed: cifar10-vgg11-fgr-1e+300; rerun to resume' in out.stderr


@pytest.mark.parametrize('args, message', [
    (['--profile', 'huge'], 'valid profiles: tiny, mini, gpu, paper, paper_sweep, gpu_lr'),
    (['--profile', 'tiny', '--rows', 'cifar10-vgg11-fgr-1'], "has no row 'cifar10-vgg11-fgr-1'"),
    (['--profile', 'tiny', '--engine', 'slurm'], 'valid engines: local, ray'),
    (['--profile', 'tiny', '--device', 'tpu'], 'valid devices: cpu, cuda, cuda:N'),
])
def test_bad_input_is_refused_before_any_work(tmp_path, monkeypatch, capsys, args, message):
    # in this process: main's checks are what the command runs first (the test below runs the command itself)
    from fgr.grid import main
    monkeypatch.setenv('FGR_RUNS', str(tmp_path / 'runs'))        # main points it at --runs-dir; the teardown restores it
    assert main(['--runs-dir', str(tmp_path / 'runs'), '--quiet', *args]) == 2
    assert message in capsys.readouterr().err
    assert not list((tmp_path / 'runs').glob('cifar*'))


def test_an_unwritable_runs_directory_is_refused(tmp_path):
    (tmp_path / 'a-file').write_text('not a folder')
    out = grid(tmp_path / 'a-file' / 'runs', '--profile', 'tiny')
    assert out.returncode == 2 and 'cannot be written' in out.stderr, out.stderr


# --- Ray: a local cluster with the machine's cores ----------------------------------------------------------------

def slow_profile(tmp_path: Path) -> Path:
    "A one-row profile whose training lasts long enough (several epochs) to be killed in the middle."
    path = tmp_path / 'slow.json'
    path.write_text(json.dumps(dict(name='slow', rows=[['cifar10', 'vgg11', 'standard', None]], epochs=3, milestones=[2], train_limit=2048, **SMALL)))
    return path


@pytest.fixture(scope='module')
def ray_installed():
    pytest.importorskip('ray', reason="ray is an optional extra: make grid-deps installs it (make test does)")


def test_ray_gives_the_runs_of_one_after_another(tmp_path, ray_installed, small, serial):
    out = grid(tmp_path / 'ray', '--profile', small, '--rows', *ROWS[:2], '--engine', 'ray', '--threads', '1')
    assert out.returncode == 0, out.stderr[-2000:]
    for row in ROWS[:2]: same_run(run_folder(tmp_path / 'ray', small, row), run_folder(serial, small, row))


def test_a_killed_ray_worker_is_retried_and_resumes_to_the_same_weights(tmp_path, ray_installed):
    profile, row = slow_profile(tmp_path), 'cifar10-vgg11-standard'
    folder = run_dir(dataclasses.replace(row_config(get_profile(str(profile)), find_row(get_profile(str(profile)), row)), runs_dir=str(tmp_path / 'ray')))
    launch = grid(tmp_path / 'ray', '--profile', str(profile), '--engine', 'ray', '--threads', '1', wait=False)
    plain = grid(tmp_path / 'plain', '--profile', str(profile), '--workers', '1', '--threads', '1', wait=False)   # the same run without Ray
    if CORES < 2: plain.wait(600)                                   # beside the Ray launch only where there are two cores
    deadline = time.time() + 300
    while not (folder / 'checkpoint.pt').exists():                   # the first epoch is done: kill the worker in the second
        assert launch.poll() is None and time.time() < deadline, launch.stderr.read() if launch.poll() is not None else 'timed out'
        time.sleep(0.2)
    assert not (folder / 'record.json').exists(), "training finished before the worker could be killed"
    workers = subprocess.run(['pgrep', '-f', 'ray::_ray_task'], capture_output=True, text=True).stdout.split()
    assert workers, "no Ray worker is running the task"
    for pid in workers: os.kill(int(pid), signal.SIGKILL)
    stdout, stderr = launch.communicate(timeout=600)
    assert launch.returncode == 0, stderr[-3000:]
    record = json.loads((folder / 'record.json').read_text())
    assert record['resumed_at'], "the retry should have resumed from the checkpoint"
    assert plain.wait(600) == 0, plain.stderr.read()
    same_run(folder, run_dir(dataclasses.replace(row_config(get_profile(str(profile)), find_row(get_profile(str(profile)), row)), runs_dir=str(tmp_path / 'plain'))))


def test_ray_on_a_cluster_needs_shared_runs_storage(tmp_path, ray_installed):
    env = {k: v for k, v in os.environ.items() if k != 'FGR_RUNS'}
    out = subprocess.run([sys.executable, '-m', 'fgr.grid', '--profile', 'tiny', '--engine', 'ray', '--quiet'], capture_output=True, text=True,
                         env=dict(env, RAY_ADDRESS='127.0.0.1:1', PYTHONPATH=str(REPO)), cwd=tmp_path, timeout=120)
    assert out.returncode != 0 and 'FGR_RUNS' in out.stderr, out.stderr[-2000:]
