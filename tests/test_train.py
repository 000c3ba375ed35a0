"""fgr.train: configuration, command line, records, reuse, bad input, and bit-identical resumption after interruption.

Everything here runs on a small synthetic CIFAR-10 folder (random PNGs in the layout of the offline data), so it needs
no real data; the six recipes train on real CIFAR-10 in nbs/experiments/recipes.ipynb."""
import dataclasses, json, os, signal, subprocess, sys, time
from pathlib import Path
import numpy as np
import pytest
import torch
from PIL import Image
from fgr.data import CIFAR10_CLASSES
from fgr.train import TrainConfig, RunError, train, main, parse_config, config_hash, run_dir, DEFENSES

REPO = Path(__file__).resolve().parents[1]
CORES = len(os.sched_getaffinity(0))


def make_fake_cifar10(root: Path, n_train: int, n_test: int, seed: int) -> Path:
    "A CIFAR-10-shaped image folder: `n_train`/`n_test` random 32×32 PNGs per class."
    rng = np.random.default_rng(seed)
    for split, n in (('train', n_train), ('test', n_test)):
        for c in CIFAR10_CLASSES:
            folder = root / 'cifar10' / split / c
            folder.mkdir(parents=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(folder / f'{i:04d}.png')
    return root


@pytest.fixture(scope='module')
def env(tmp_path_factory):
    "Fake data, a private data cache, and the environment for subprocesses."
    tmp = tmp_path_factory.mktemp('train')
    data = make_fake_cifar10(tmp / 'data', 32, 8, seed=0)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv('FGR_CACHE', str(tmp / 'cache'))
        mp.delenv('FGR_RUNS', raising=False)
        sub = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS='1', MKL_NUM_THREADS='1', PYTHONHASHSEED='0')
        yield dict(tmp=tmp, data=data, sub=sub)


def tiny(env, runs, **kw) -> TrainConfig:
    base = dict(width=1 / 16, defense='standard', epochs=1, batch_size=64, data_root=str(env['data']), runs_dir=str(runs),
                device='cpu', progress=False)
    return TrainConfig(**{**base, **kw})


def weights(path: Path) -> dict:
    return torch.load(path, map_location='cpu', weights_only=True)['model']


# --- configuration and command line -------------------------------------------------------------------------------

def test_defaults_are_the_papers():
    c = TrainConfig().resolved()
    assert (c.dataset, c.arch, c.width, c.defense, c.batch_size, c.epochs, c.lr, c.milestones, c.lr_decay) == \
           ('cifar10', 'vgg11', 1.0, 'standard', 128, 60, 0.1, (30, 50), 0.1)
    assert (c.momentum, c.weight_decay, c.random_flow_std, c.lam_warmup_epochs) == (0.9, 5e-4, 0.0, 0.0)   # no λ warm-up
    assert (c.at_epsilon, c.at_step_size, c.at_iterations, c.adt_epsilon, c.adt_iterations) == (8 / 255, 2 / 255, 7, 0.01, 7)
    assert [TrainConfig(defense=d).resolved().lam for d in DEFENSES] == [0.0, 0.0, 5000.0, 0.0, 700.0, 700.0]
    assert c.pipeline == 'paper'
    a = TrainConfig(defense='fgr', variant='authors_code').resolved()
    assert (a.epochs, a.lr, a.milestones, a.random_flow_std, a.pipeline) == (80, 0.01, (40, 60), 0.01, 'authors_code')


def test_cli_and_api_share_one_configuration():
    assert parse_config([]) == TrainConfig()
    assert parse_config('--dataset cifar100 --arch resnet18 --defense fgr --lam 700 --width 0.25 --milestones 3 5 '
                        '--train-limit 100 --force --no-progress'.split()) == \
        TrainConfig(dataset='cifar100', arch='resnet18', defense='fgr', lam=700, width=0.25, milestones=(3, 5),
                    train_limit=100, force=True, progress=False)
    # every field has an option
    help_text = subprocess.run([sys.executable, '-m', 'fgr.train', '--help'], capture_output=True, text=True, cwd=REPO,
                               env=dict(os.environ, PYTHONPATH=str(REPO)), timeout=120)
    assert help_text.returncode == 0, help_text.stderr
    for f in dataclasses.fields(TrainConfig): assert f'--{f.name}' in help_text.stdout
    flat = ' '.join(help_text.stdout.split())
    assert 'standard | at | igr | adt | fgr | fgr_adt' in flat and '(default: 128)' in flat


def test_hash_ignores_where_and_how_but_not_what():
    assert config_hash(TrainConfig(defense='fgr')) == config_hash(TrainConfig(defense='fgr', lam=700.0, epochs=60, device='cpu',
                                                                               runs_dir='x', force=True, progress=False, cuda_graphs=True))
    assert len({config_hash(TrainConfig(**kw)) for kw in [{}, dict(seed=1), dict(width=0.5), dict(defense='at'),
                                                           dict(variant='authors_code'), dict(train_limit=10)]}) == 6


@pytest.mark.parametrize('argv, message', [
    (['--dataset', 'mnist'], 'valid datasets: cifar10, cifar100'),
    (['--arch', 'vgg16'], 'valid architectures: vgg11, resnet18'),
    (['--defense', 'trades'], 'valid defenses: standard, at, igr, adt, fgr, fgr_adt'),
    (['--variant', 'code'], 'valid variants: paper, authors_code'),
    (['--defense', 'fgr', '--lam', '-1'], 'lam must be ≥ 0'),
    (['--defense', 'at', '--lam', '700'], 'has no penalty'),
    (['--epochs', '0'], 'epochs must be ≥ 1'),
    (['--width', '0'], 'width must be > 0'),
    (['--epochs', 'two'], "invalid int value: 'two'"),
    (['--threads', '0'], 'threads must be between 1'),
    (['--threads', str(CORES + 1)], "and this machine's"),
])
def test_cli_refuses_bad_settings(argv, message, capsys, tmp_path):
    with pytest.raises(SystemExit) as e: main(argv + ['--runs_dir', str(tmp_path / 'runs')])
    assert e.value.code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / 'runs').exists()


def test_a_data_root_without_cifar_is_an_error_and_writes_nothing(env, tmp_path, capsys):
    (tmp_path / 'empty').mkdir()
    assert main(['--data_root', str(tmp_path / 'empty'), '--runs_dir', str(tmp_path / 'runs')]) == 1
    assert 'does not hold cifar10' in capsys.readouterr().err
    assert not (tmp_path / 'runs').exists()


def test_cuda_graphs_without_a_gpu_is_an_error_and_writes_nothing(tmp_path, capsys):
    assert main(['--cuda-graphs', '--device', 'cpu', '--runs_dir', str(tmp_path / 'runs')]) == 1
    assert 'cuda_graphs needs a CUDA device' in capsys.readouterr().err
    assert not (tmp_path / 'runs').exists()


def test_a_limit_beyond_the_data_is_an_error(env, tmp_path):
    with pytest.raises(ValueError, match='has only 320 images'): train(tiny(env, tmp_path, train_limit=1000))


# --- records, reuse, force, damaged runs ---------------------------------------------------------------------------

def test_record_reuse_and_force(env, tmp_path, capsys):
    cfg = tiny(env, tmp_path, defense='fgr', epochs=2)
    record = train(cfg)
    folder = run_dir(cfg)
    assert json.loads((folder / 'record.json').read_text()) == record
    assert record['config'] == json.loads(json.dumps(dataclasses.asdict(cfg.resolved())))
    assert record['config_hash'] == config_hash(cfg) and record['data']['train_images'] == 320
    assert record['metrics']['loss'] > 0 and record['metrics']['penalty'] > 0 and 0 <= record['metrics']['test_accuracy'] <= 1
    assert [set(e) for e in record['metrics']['history']] == [{'epoch', 'loss', 'penalty', 'train_accuracy', 'test_accuracy', 'seconds'}] * 2
    p = record['provenance']
    assert p['packages']['torch'] == torch.__version__ and p['device'] == 'cpu' and 'git_commit' in p
    assert record['wall_time_s'] > 0
    out = capsys.readouterr().out
    assert sum(l.startswith('epoch ') for l in out.splitlines()) == 2 and 'test_acc' in out and 'penalty' in out

    # the same configuration again: reused, nothing written
    stamp = {f.name: f.stat().st_mtime_ns for f in folder.iterdir()}
    assert train(cfg) == record and 'reusing' in capsys.readouterr().out
    assert {f.name: f.stat().st_mtime_ns for f in folder.iterdir()} == stamp

    # force: trains again; the old run is moved aside, intact
    again = train(dataclasses.replace(cfg, force=True))
    aside = [d for d in tmp_path.iterdir() if '.replaced-' in d.name]
    assert len(aside) == 1 and json.loads((aside[0] / 'record.json').read_text()) == record
    assert [e['loss'] for e in again['metrics']['history']] == [e['loss'] for e in record['metrics']['history']]


def test_damaged_or_foreign_files_are_errors_and_left_alone(env, tmp_path):
    cfg = tiny(env, tmp_path)
    train(cfg)
    folder = run_dir(cfg)
    good = (folder / 'checkpoint.pt').read_bytes()

    # a checkpoint of another configuration
    other = dataclasses.replace(cfg, seed=1)
    run_dir(other).mkdir()
    (run_dir(other) / 'checkpoint.pt').write_bytes(good)
    with pytest.raises(RunError, match='belongs to configuration'): train(other)
    assert (run_dir(other) / 'checkpoint.pt').read_bytes() == good

    # a finished record, asked for with different data under the same configuration
    other_data = make_fake_cifar10(tmp_path / 'other_data', 32, 8, seed=1)
    with pytest.raises(RunError, match='different data'): train(dataclasses.replace(cfg, data_root=str(other_data)))

    # a corrupted record, then a truncated checkpoint
    (folder / 'record.json').write_text('{"config_hash": ')
    with pytest.raises(RunError, match='cannot read the training record'): train(cfg)
    assert (folder / 'record.json').read_text() == '{"config_hash": '
    (folder / 'record.json').unlink()
    (folder / 'checkpoint.pt').write_bytes(good[:len(good) // 2])
    with pytest.raises(RunError, match='cannot read the checkpoint'): train(cfg)
    assert (folder / 'checkpoint.pt').read_bytes() == good[:len(good) // 2]
    (folder / 'checkpoint.pt').write_bytes(b'not a checkpoint at all')
    with pytest.raises(RunError, match='checkpoint'): train(cfg)

    # force moves the damaged run aside and starts again
    assert train(dataclasses.replace(cfg, force=True))['metrics']['history'][0]['epoch'] == 1
    assert any((d / 'checkpoint.pt').read_bytes() == b'not a checkpoint at all' for d in tmp_path.iterdir() if '.replaced-' in d.name)


def test_a_run_computes_with_the_threads_it_is_given(env, tmp_path, capsys):
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(CORES)         # so that one thread is a change (on two cores or more)
        record = train(tiny(env, tmp_path, threads=1))
        assert torch.get_num_threads() == 1 and record['provenance']['cpu_threads'] == 1
        torch.set_num_threads(before)
        assert train(tiny(env, tmp_path)) == record and 'reusing' in capsys.readouterr().out   # how it ran, not what: the same run
    finally: torch.set_num_threads(before)


def test_seeded_runs_are_deterministic(env, tmp_path):
    a = train(tiny(env, tmp_path / 'a', defense='igr'))
    b = train(tiny(env, tmp_path / 'b', defense='igr'))
    c = train(tiny(env, tmp_path / 'c', defense='igr', seed=1))
    wa, wb, wc = (weights(Path(r['checkpoint'])) for r in (a, b, c))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert not all(torch.equal(wa[k], wc[k]) for k in wa)


def test_lambda_warms_up_over_the_first_epochs(env, tmp_path, monkeypatch):
    import fgr.step
    seen, real = [], fgr.step.optimizer_step
    monkeypatch.setattr(fgr.step, 'optimizer_step', lambda m, o, f, x, y, cfg: (seen.append(cfg.lam), real(m, o, f, x, y, cfg))[1])
    record = train(tiny(env, tmp_path, defense='fgr', epochs=2, lam_warmup_epochs=1))
    steps = len(seen) // 2                               # 320 images in batches of 64: 5 steps per epoch
    assert steps == 5 and seen == pytest.approx([700 * t / steps for t in range(steps)] + [700.0] * steps)
    assert record['config']['lam'] == 700.0 and record['config']['lam_warmup_epochs'] == 1.0


# --- interruption ----------------------------------------------------------------------------------------------------

def _command(env, runs):
    return [sys.executable, '-m', 'fgr.train', '--defense', 'fgr_adt', '--variant', 'authors_code', '--width', '0.0625',
            '--epochs', '4', '--lr', '0.05', '--batch_size', '64', '--milestones', '2', '--data_root', str(env['data']),
            '--runs_dir', str(runs), '--device', 'cpu', '--seed', '3', '--lam_warmup_epochs', '2.5', '--no-progress']   # λ still rising at the first resumption


def _checkpoint_epoch(runs: Path) -> int:
    ckpt = list(runs.glob('*/checkpoint.pt'))
    if not ckpt: return 0
    try: return torch.load(ckpt[0], map_location='cpu', weights_only=True)['epoch']
    except Exception: return 0   # caught mid-rename on a slow file system: look again


def _interrupt_after(env, runs, epoch, sig):
    "Start the run, send `sig` as soon as the checkpoint of `epoch` exists; return (exit status, stdout)."
    # as from a terminal: a job started in the background inherits SIGINT ignored, and Python then never raises KeyboardInterrupt
    proc = subprocess.Popen(_command(env, runs), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env['sub'],
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 120
    while _checkpoint_epoch(runs) < epoch:
        assert proc.poll() is None, f"the run ended before epoch {epoch}: {proc.communicate()}"
        assert time.time() < deadline, 'no checkpoint within two minutes'
        time.sleep(0.02)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=120)
    assert not list(runs.glob('*/record.json')), 'the run finished before it could be interrupted: make its epochs longer'
    return proc.returncode, out


def test_interrupted_run_resumes_to_identical_weights(env, tmp_path):
    # the uninterrupted run beside the interrupted ones, one thread each, where there are two cores
    full = subprocess.Popen(_command(env, tmp_path / 'full'), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env['sub'])
    if CORES < 2: full.wait(300)

    runs = tmp_path / 'interrupted'
    rc, out = _interrupt_after(env, runs, 1, signal.SIGINT)             # Ctrl-C
    assert rc == 130 and 'interrupted' in out, out
    rc, out = _interrupt_after(env, runs, _checkpoint_epoch(runs) + 1, signal.SIGTERM)
    assert rc == 130 and 'resuming' in out and 'interrupted' in out, out
    rc, _ = _interrupt_after(env, runs, _checkpoint_epoch(runs) + 1, signal.SIGKILL)
    assert rc == -signal.SIGKILL and _checkpoint_epoch(runs) < 4
    last = subprocess.run(_command(env, runs), capture_output=True, text=True, env=env['sub'], timeout=300)
    assert last.returncode == 0 and 'resuming' in last.stdout, last.stderr
    assert full.wait(300) == 0, full.stderr.read()

    (a,), (b,) = list((tmp_path / 'full').glob('*/checkpoint.pt')), list(runs.glob('*/checkpoint.pt'))
    wa, wb = weights(a), weights(b)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    ra, rb = (json.loads(p.with_name('record.json').read_text()) for p in (a, b))
    assert len(rb['resumed_at']) == 3 and ra['resumed_at'] == []
    strip = lambda h: [{k: v for k, v in e.items() if k != 'seconds'} for e in h]
    assert strip(ra['metrics']['history']) == strip(rb['metrics']['history'])


def test_provenance_takes_the_commit_from_the_environment_when_set(monkeypatch):
    # a copy of the tree without .git (as on a rented GPU machine): the commit comes from $FGR_GIT_COMMIT
    import fgr.records
    monkeypatch.setattr(fgr.records, '_git', lambda *args: None)
    monkeypatch.setenv('FGR_GIT_COMMIT', '0123abc')
    p = fgr.records.provenance(torch.device('cpu'))
    assert (p['git_commit'], p['git_dirty']) == ('0123abc', None)
    monkeypatch.delenv('FGR_GIT_COMMIT')
    assert fgr.records.provenance(torch.device('cpu'))['git_commit'] is None
    monkeypatch.setattr(fgr.records, '_git', lambda *args: 'stale' if args[0] == 'rev-parse' else ' M x')   # a stale .git
    monkeypatch.setenv('FGR_GIT_COMMIT', '0123abc')
    assert (fgr.records.provenance(torch.device('cpu'))['git_commit'], fgr.records.provenance(torch.device('cpu'))['git_dirty']) == ('0123abc', None)


# --- the authors' data pipeline, divergence, collapse -------------------------------------------------------------

def test_the_authors_pipeline_tests_on_resized_centre_crops(env, tmp_path):
    "A run of the authors' pipeline reports the accuracy of its model on test images resized to 36 and centre-cropped to 32."
    import torch.nn.functional as F
    from fgr.data import load_cifar, random_subset, to_float
    from fgr.evaluate import evaluate, load_model
    record = train(tiny(env, tmp_path, pipeline='authors_code', epochs=2))
    x, y = load_cifar('cifar10', 'test', str(env['data']))
    x = to_float(x)
    crops = F.interpolate(x, size=(36, 36), mode='bilinear', align_corners=False)[..., 2:34, 2:34]
    assert crops.shape == x.shape and 0 <= crops.min() and crops.max() <= 1
    model = load_model(record)
    with torch.no_grad():
        on_crops = (model(crops).argmax(1) == y).float().mean().item()
        xs, ys = random_subset(x, y, 40, 0)
        sub = F.interpolate(xs, size=(36, 36), mode='bilinear', align_corners=False)[..., 2:34, 2:34]
        on_sub = (model(sub).argmax(1) == ys).float().mean().item()
        on_raw = model(xs).argmax(1)
    assert not torch.equal(on_raw, model(sub).argmax(1)), "the check needs a model whose predictions the transform changes"
    assert record['metrics']['test_accuracy'] == pytest.approx(on_crops, abs=1e-6)
    assert evaluate(record, 'clean', images=40)['accuracy'] == pytest.approx(on_sub, abs=1e-6)


def test_a_non_finite_loss_stops_the_run_naming_epoch_and_step(env, tmp_path):
    from fgr.train import DivergenceError
    cfg = tiny(env, tmp_path, epochs=3, lr=1e30)
    with pytest.raises(DivergenceError, match=r'non-finite loss .* in epoch \d+, step \d+ of 5'): train(cfg)
    assert not (run_dir(cfg) / 'record.json').exists()


def test_a_run_near_chance_is_flagged(env, tmp_path):
    "Random images carry no signal: the model cannot beat chance, and its record says so."
    record = train(tiny(env, tmp_path, epochs=2))
    assert record['metrics']['did_not_learn'] is True


def test_the_evaluate_command_attacks_a_trained_run(env, tmp_path):
    record = train(tiny(env, tmp_path))
    cmd = [sys.executable, '-m', 'fgr.evaluate', record['run_dir'], '--attacks', 'clean,ss', '--images', '20']
    out = subprocess.run(cmd, capture_output=True, text=True, env=env['sub'], cwd=REPO, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[0].split() == ['attack', 'accuracy', 'queries/image', 'seconds']
    assert [l.split()[0] for l in out.stdout.splitlines()[1:-1]] == ['clean', 'ss']
    assert out.stdout.splitlines()[-1].startswith('sanity: '), out.stdout      # the experiments chapter's checks, passed or named
    bad = subprocess.run(cmd[:4] + ['--attacks', 'fgsm'], capture_output=True, text=True, env=env['sub'], cwd=REPO, timeout=300)
    assert bad.returncode == 2 and 'valid attacks: clean, ss, ms, ob, gf' in bad.stderr
