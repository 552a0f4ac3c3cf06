"""TFDS without TensorFlow: build a dataset from a local audio folder, read audio datasets.

`AudioFolder` is a TFDS builder for a folder of audio files: labels are the names of the
first-level sub-folders (files all at the top level give an unlabelled dataset). It stores
ArrayRecord files, the format with random access and the one TFDS writes without
TensorFlow. Each example holds

    audio        Tensor float32 (samples,)  mono, in [-1, 1], at sample_rate
    sample_rate  int32                      16000 unless the builder is given another
    label        ClassLabel                 the sub-folder (absent when unlabelled)
    filename     Text                       the path relative to the folder

The waveform is what audio_io.load_audio gives, as in `prepare --input`: channels averaged
(a TFDS tensor has one fixed channel count, and every front end here is mono), resampled
to one rate (every front end here is 16 kHz), float32 (16- and 24-bit PCM stay exact).
Unusable audio stops the build with the file's path and the reason (the folder should be
fixed, not silently thinned).

`open_source(name, data_dir, split)` reads one split of any TFDS audio dataset prepared in
`data_dir` in the ArrayRecord format, TensorFlow or not. `tfds.data_source` cannot do that
for the catalog datasets: their `tfds.features.Audio` feature imports TensorFlow as soon as
it is constructed, so even `tfds.builder(...).info` fails. The source therefore reads the
prepared files with TFDS's own parts (dataset_info.json, split file instructions,
features.json restored with each `Audio` as the numeric `Tensor` it stores, the tf.Example
parser that needs no TensorFlow); for datasets without `Audio` features it gives exactly
what `tfds.data_source` gives.

    python -m data_pipelines.tfds_audio --input=FOLDER --output=DATA_DIR [--name=NAME]
        [--sample_rate=16000]

Modules: builder (AudioFolder, build_audio_folder), source (TfdsAudioSource, open_source),
__main__ (the command line above).
"""
from data_pipelines.tfds_audio.builder import (
    BUILDER_NAME,
    AudioFolder,
    AudioFolderConfig,
    audio_files,
    build_audio_folder,
    config_name,
    folder_labels,
)
from data_pipelines.tfds_audio.source import (
    FILE_FORMAT,
    TfdsAudioSource,
    available_datasets,
    find_dataset_dir,
    open_source,
    to_float_waveform,
)

__all__ = ["BUILDER_NAME", "FILE_FORMAT", "AudioFolder", "AudioFolderConfig", "TfdsAudioSource",
           "audio_files", "available_datasets", "build_audio_folder", "config_name",
           "find_dataset_dir", "folder_labels", "open_source", "to_float_waveform"]
