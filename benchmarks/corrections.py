"""Corrections of committed records' provenance, kept as data: `fgr.records.add_correction` writes each into the record
it corrects (`provenance.correction`), beside what the record said, and the pages show the corrected value
(`fgr.records.commit_note`). Applying them again changes nothing. Run: `.venv/bin/python benchmarks/corrections.py`.
"""
from pathlib import Path
from fgr.records import add_correction

HERE = Path(__file__).resolve().parent
STALE_GIT = ("the GPU machine's copy of the repository carried a stale .git, which described the session's starting checkout; "
             "the code that ran was e53cd24, passed to the machine as FGR_GIT_COMMIT, which provenance did not yet prefer")
RAN = dict(git_commit='e53cd24348c902deed6b6cef1d4d9a73eebe307b', git_dirty=None)   # given by the variable: clean or not is unknown

CORRECTIONS = [(HERE / 'training' / 'h200-vgg11-w0.25-e15' / f'{defense}.json', 'run', STALE_GIT, RAN)
               for defense in ('standard', 'at', 'igr', 'adt', 'fgr', 'fgr_adt')] + \
              [(HERE / 'results' / '20261126T102832Z-cuda-gpu-check.json', 'bench', STALE_GIT, RAN)]

if __name__ == '__main__':
    for path, kind, reason, fields in CORRECTIONS:
        add_correction(path, kind, reason, **fields)
        print(f"corrected {path.relative_to(HERE)}: {', '.join(f'{k}={v}' for k, v in fields.items())}")
