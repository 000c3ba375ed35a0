"""Records of a GPU window (tools/gpu_window.sh), packed there and imported here.

  pack   (there, after the grids)  python tools/window_records.py pack --grid G.json [G.json ...] --checks C.json --started T --out A.tar.gz
         For each grid's profile: Table 1 and the unseen table of the rows that finished (from their cached evaluations:
         nothing is trained), then the finished rows' run folders without checkpoints (record.json, eval/*.json), those
         tables, the grid record, and a manifest (window.json: the GPU, torch, the commit, the wall time, every row's
         status, the checks) in one tar.gz. Rows that did not finish are listed in the manifest and packed with nothing.
  import (here)                    python tools/window_records.py import A.tar.gz [--into results]
         Checks every record in the archive (its kind and schema) and copies the run folders to <into>/<profile>/runs/,
         and what describes this window (the manifest, the grid records, the tables made from the rows it had finished)
         to <into>/windows/<its start time>/; a file already there with other contents is refused, never overwritten."""
import argparse, dataclasses, io, json, shutil, sys, tarfile, tempfile, time
from pathlib import Path

KINDS = {'table1': 'table1', 'unseen': 'unseen', 'grid': 'grid', 'surface': 'surface', 'theory': 'theory', 'example': 'example'}


def kind_of(path:Path) -> str:
    "The record kind of an archived file, from its name: run folders' record.json, eval/<attack>-<key>.json, and the tables."
    if path.name == 'record.json': return 'run'
    if path.parent.name == 'eval': return KINDS.get(path.name.split('-')[0], 'evaluation')
    return KINDS[path.name.split('-')[0].split('.')[0]]


def progress(P, row:str) -> dict:
    "How far an unfinished row of profile `P` got: the per-epoch history in its last checkpoint (none if it has none)."
    import torch
    from fgr.experiments import find_row, row_config
    from fgr.train import run_dir
    path = run_dir(row_config(P, find_row(P, row))) / 'checkpoint.pt'
    if not path.exists(): return dict(epochs_done=0, history=[])
    state = torch.load(path, map_location='cpu', weights_only=True)
    return dict(epochs_done=state['epoch'], history=state['history'])


def pack(grids:list[Path], checks:Path|None, started:float, out:Path) -> dict:
    "Write the archive `out` of the finished rows of the grid records `grids`; return its manifest."
    from fgr.experiments import find_row, get_profile, runs_dir, table1, table1_path
    from fgr.records import provenance, read_record
    from fgr.unseen import unseen_path, unseen_table
    import torch
    if out.exists(): raise SystemExit(f"error: {out} exists; nothing is overwritten")
    files, statuses, device = {}, {}, 'cpu'
    for g in grids:
        grid = read_record(g, 'grid')
        P, device = get_profile(grid['profile']), grid['device']
        done = [r for r in grid['results'] if r['status'] == 'done']
        statuses[P.name] = [dict(row=r['row'], status=r['status'], seconds=r.get('seconds'), error=r.get('error'),
                                 **({} if r['status'] == 'done' else progress(P, r['row']))) for r in grid['results']]
        files[f"{P.name}/{g.name}"] = g
        if not done: continue
        finished = dataclasses.replace(P, rows=tuple(find_row(P, r['row']) for r in done))
        table1(finished, device); unseen_table(finished, device)         # read from the cached evaluations: nothing is trained
        files[f"{P.name}/{table1_path(P).name}"], files[f"{P.name}/{unseen_path(P).name}"] = table1_path(P), unseen_path(P)
        for r in done:
            folder = runs_dir() / Path(r['record']).parent
            files[f"{P.name}/runs/{folder.name}/record.json"] = folder / 'record.json'
            for e in sorted((folder / 'eval').glob('*.json')): files[f"{P.name}/runs/{folder.name}/eval/{e.name}"] = e
    manifest = dict(created=time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime()), wall_time_s=time.time() - started,
                    provenance=provenance(torch.device(device)), rows=statuses,
                    checks=json.loads(checks.read_text()) if checks and checks.exists() else None)
    tmp = out.with_name(f".{out.name}.tmp")
    with tarfile.open(tmp, 'w:gz') as tar:
        data = json.dumps(manifest, indent=1).encode()
        info = tarfile.TarInfo('window.json'); info.size = len(data); tar.addfile(info, io.BytesIO(data))
        for name, path in sorted(files.items()): tar.add(path, arcname=name)
    tmp.replace(out)
    return manifest


def import_archive(archive:Path, into:Path) -> list[Path]:
    "Check every record of `archive` and copy it under `into`; return the files written (those already there, identical, are skipped)."
    from fgr.records import check_record
    with tempfile.TemporaryDirectory() as tmp, tarfile.open(archive) as tar:
        for m in tar.getmembers():
            if not (m.isfile() or m.isdir()) or m.name.startswith('/') or '..' in Path(m.name).parts:
                raise SystemExit(f"error: {archive} holds {m.name!r}, which is not a plain file inside it: refused")
        tar.extractall(tmp)
        root = Path(tmp)
        manifest = json.loads((root / 'window.json').read_text())
        window = into / 'windows' / manifest['created'].replace(':', '')
        plan = {window / 'window.json': root / 'window.json'}
        for f in sorted(root.rglob('*.json')):
            rel = f.relative_to(root)
            if rel.name == 'window.json' and len(rel.parts) == 1: continue
            try: check_record(json.loads(f.read_text()), kind_of(rel), str(rel))
            except (ValueError, KeyError) as e: raise SystemExit(f"error: {rel} in {archive} is not a record this code reads: {e}")
            plan[into / rel if 'runs' in rel.parts else window / rel] = f
        clash = [str(dst) for dst, src in plan.items() if dst.exists() and dst.read_bytes() != src.read_bytes()]
        if clash: raise SystemExit(f"error: {len(clash)} files would be overwritten with other contents, e.g. {clash[0]}: nothing was imported")
        written = []
        for dst, src in plan.items():
            if dst.exists(): continue
            dst.parent.mkdir(parents=True, exist_ok=True); shutil.copyfile(src, dst); written.append(dst)
    return written


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest='command', required=True)
    a = sub.add_parser('pack'); a.add_argument('--grid', nargs='+', type=Path, required=True); a.add_argument('--checks', type=Path)
    a.add_argument('--started', type=float, required=True, help='the window\'s start, seconds since the epoch'); a.add_argument('--out', type=Path, required=True)
    b = sub.add_parser('import'); b.add_argument('archive', type=Path); b.add_argument('--into', type=Path, default=Path(__file__).resolve().parents[1] / 'results')
    args = p.parse_args(argv)
    if args.command == 'pack':
        m = pack(args.grid, args.checks, args.started, args.out)
        print(f"{args.out} ({args.out.stat().st_size / 2**20:.2f} MiB): " +
              '; '.join(f"{p}: {sum(r['status'] == 'done' for r in rows)} of {len(rows)} rows done" for p, rows in m['rows'].items()))
    else:
        if not args.archive.is_file(): print(f"error: {args.archive} is not a file", file=sys.stderr); return 2
        written = import_archive(args.archive, args.into)
        print(f"imported {len(written)} files into {args.into}")
    return 0


if __name__ == '__main__': sys.exit(main())
