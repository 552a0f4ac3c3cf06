"""Any audio folder or TFDS dataset -> log-mel shards (the command line: cli.py, run as
`python -m data_pipelines.prepare`).

Input: every file under --input (recursively, following links to folders) whose extension
is one of audio_io.AUDIO_EXTENSIONS, in sorted order of its path relative to --input. With
--labels, the CSV (`filename,label[,fold][,split]`, filename relative to --input) lists the
files instead; audio files it does not name are ignored (and counted). With
--labels_from=folders, a file's class is the first folder under --input that holds it.
Classes go to metadata `label_maps` ({"label": [names]}, plus "fold"/"split" when the CSV
has them) and each record's labels as indices into those lists.

Bad input (audio_io gives the reasons): a file that cannot be used (empty, no frames,
truncated, corrupt, not audio, unreadable, a broken link, NaN/inf samples, shorter than
--min_seconds, a labels CSV row naming a missing file or with an empty label) is an error;
a file used after a fix (downmixed, resampled, split at --max_seconds, all silent: kept
unless --drop_silent) is a warning. --on_error=skip (default) lists every error in
errors.csv and every warning in warnings.csv and prints counts; --on_error=fail stops at
the first error, naming the file, and keeps the finished units for a later run.

How: the input list is cut into work units of consecutive items. A worker process turns a
unit into its own shard file(s) `unit-UUUUU-PP.array_record` and a sidecar
`units/unit-UUUUU.json` (fingerprint, counts, mel moments, errors, warnings, examples),
both written under temporary names and renamed, so a killed run leaves no half unit that
counts. A unit is done when its sidecar's fingerprint (its items' paths, sizes, mtimes and
labels, the options and the front end) is the current one and its shard files are there.
When every unit is done, the sidecars are merged into `metadata.json` (what
shards.ShardSource reads; written last), `examples.csv` (id, source path, segment, start,
length, shard, labels), `errors.csv` and `warnings.csv` (path, reason).

Running again: with the same input and options, nothing is done and nothing is written. If
files were added, removed or changed, the units whose items changed are redone (adding or
removing a file renumbers the list, so that redoes every unit). Other options or another
--input than the folder was made with are refused, naming what changed.

Example ids: item i of N (0-based, in list order) gives id i to its first segment and
i + s * N to segment s of a file split at --max_seconds, so ids are unique, stable and, for
unsplit files, equal to the file's position. Ids stay below 2**31 (training batches carry
them as int32); a file that would pass that is an error asking for a larger --max_seconds.

Modules: errors (PrepareError, ItemFailed), labels (the --labels CSV), sources (the audio
folder's listing, TFDS), plan (options, items cut into units, fingerprints), units
(decoding one unit into its shards and sidecar), workers (the process pool),
output_folder (refusing other folders, done units, the merge), run (`prepare()`), cli.
"""
from data_pipelines.prepare.errors import ItemFailed, PrepareError
from data_pipelines.prepare.plan import Options
from data_pipelines.prepare.run import Summary, prepare

__all__ = ["ItemFailed", "Options", "PrepareError", "Summary", "prepare"]
