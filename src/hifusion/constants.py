"""Every AnnData key, HDF5 field and file-name convention of the package, in one place.

Readers, the patch cache, training and prediction all import names from here so that a file written by one
part is read by another without string literals drifting apart.
"""

from __future__ import annotations

# ----------------------------------------------------------------------------------------------- cache file names
H5AD_SUFFIX = ".h5ad"
PATCHES_SUFFIX = ".patches.h5"
CACHE_MANIFEST = "cache.json"  # parameters a cache folder was made with (reuse with others is an error)

# --------------------------------------------------------------------------------- embedding cache (frozen encoders)
# `<cache>/embeddings/<section>.<key hash>.h5`: float32 (N_spots, C) frozen-encoder embeddings of every spot of a
# section under one view, the full key (JSON) in the attrs; written atomically, never modified afterwards.
EMBEDDINGS_DIR = "embeddings"
EMBEDDINGS_SUFFIX = ".h5"
H5_EMBEDDINGS = "embeddings"
H5_ATTR_EMB_KEY = "key"  # canonical JSON of the key the file was made under
EMBEDDING_FORMAT = 1  # bump when the file layout or what a key covers changes: older files are then recomputed
EMBEDDING_BATCH = 64  # spots per encoder call when embedding: fixed, so embeddings never depend on train.batch_size
EMBEDDING_MEMO_BYTES = 1 << 30  # embeddings a fit keeps in memory (most recent first); older ones are read again

# ------------------------------------------------------------------------------------------------------ obs keys
OBS_SECTION = "section"
OBS_PATIENT = "patient"
OBS_ARRAY_X = "array_x"
OBS_ARRAY_Y = "array_y"
OBS_NEW_X = "new_x"
OBS_NEW_Y = "new_y"
OBS_AT_BORDER = "at_border"
OBS_TOTAL_COUNTS = "total_counts"
OBS_LOW_COUNTS = "low_counts"
LOW_COUNTS_THRESHOLD = 100
OBS_TISSUE_FRACTION = "tissue_fraction"  # share of the spot patch's pixels that look like tissue (prepare, predict)
OBS_ON_TISSUE = "on_tissue"  # tissue_fraction >= MIN_SPOT_TISSUE_FRACTION
MIN_SPOT_TISSUE_FRACTION = 0.05  # under this the spot patch is background (blank, black or white glass)
MAX_BACKGROUND_SHARE = 0.5  # prepare stops when more spots of a section than this are background
UPSAMPLE_WARN_FACTOR = 4.0  # prepare warns when patches are enlarged more than this from the image

# ----------------------------------------------------------------------------------------------- var/obsm/uns keys
VAR_GENE_IDS = "gene_ids"
OBSM_SPATIAL = "spatial"  # spot centres, full-resolution image pixels (x, y)
UNS_SPATIAL = "spatial"
UNS_HIRES = "hires"
UNS_HIRES_SCALEF = "tissue_hires_scalef"
UNS_SPOT_DIAMETER = "spot_diameter_fullres"
UNS_HIFUSION = "hifusion"  # our own metadata: mpp, image path, source format, coordinate scale
HIRES_MAX_SIDE = 2000

# -------------------------------------------------------------------------------------------- patch file (HEST-like)
H5_IMG = "img"
H5_COORDS = "coords"  # integer top-left corner of the region patch, full-resolution pixels
H5_BARCODE = "barcode"
H5_ATTR_PIXEL_SIZE = "pixel_size"  # um/px of the stored patches
H5_ATTR_SPOT_PX = "spot_px"
H5_ATTR_REGION_PX = "region_px"
H5_ATTR_SPOT_UM = "spot_um"
H5_ATTR_REGION_FACTOR = "region_factor"
H5_ATTR_IMAGE_MPP = "image_mpp"
H5_ATTR_SECTION = "section"
H5_ATTR_PAD_COLOUR = "pad_colour"

# ------------------------------------------------------------------------------------------ physical defaults
DEFAULT_SPOT_UM = 154.6  # 224 px at ~0.69 um/px: the paper's spot field of view on HER2ST
DEFAULT_SPOT_PX = 224
CPU_SPOT_PX = 112
DEFAULT_REGION_FACTOR = 2.0
LEGACY_ST_PITCH_UM = 200.0  # centre-to-centre distance of neighbouring legacy ST array positions
LEGACY_ST_SPOT_DIAMETER_UM = 100.0
VISIUM_SPOT_DIAMETER_UM = 55.0

# ------------------------------------------------------------------------------------------------- HER2ST layout
HER2ST_COUNTS_DIR = "ST-cnts"
HER2ST_SPOTS_DIR = "ST-spotfiles"
HER2ST_IMAGES_DIR = "ST-imgs"
HER2ST_COUNTS_PATTERN = "{section}.tsv.gz"
HER2ST_SPOTS_PATTERN = "{section}_selection.tsv"

# ------------------------------------------------------------------------------------------------- ST-Net layout
STNET_IMAGE_PATTERN = "{patient}_{section}.jpg"
STNET_COUNTS_PATTERN = "{patient}_{section}.tsv.gz"
STNET_SPOTS_PATTERN = "{patient}_{section}.spots.txt"
STNET_TUMOUR_PATTERN = "{patient}_{section}_Coords.tsv"

# -------------------------------------------------------------------------------------------- Visium Space Ranger
VISIUM_MATRIX_H5 = "filtered_feature_bc_matrix.h5"
VISIUM_SPATIAL_DIR = "spatial"
VISIUM_POSITIONS = "tissue_positions.csv"
VISIUM_POSITIONS_LEGACY = "tissue_positions_list.csv"
VISIUM_SCALEFACTORS = "scalefactors_json.json"
VISIUM_HIRES_IMAGE = "tissue_hires_image.png"  # Space Ranger's downsampled copies, used when no full-res image
VISIUM_LOWRES_IMAGE = "tissue_lowres_image.png"
VISIUM_HIRES_SCALEF = "tissue_hires_scalef"  # full-resolution pixels -> hires image pixels
VISIUM_LOWRES_SCALEF = "tissue_lowres_scalef"
VISIUM_FIDUCIAL_DIAMETER = "fiducial_diameter_fullres"  # written by Space Ranger only: marks scale factors as Visium

# ------------------------------------------------------------------------------------ Visium HD (Space Ranger 3/4)
VISIUM_HD_BINNED_DIR = "binned_outputs"  # outs/binned_outputs/square_002um, square_008um, square_016um
VISIUM_HD_BIN_PATTERN = "square_{bin_um:03d}um"
VISIUM_HD_BIN_SIZES = (2, 8, 16)
VISIUM_HD_POSITIONS = "tissue_positions.parquet"
VISIUM_HD_MPP_KEY = "microns_per_pixel"  # scalefactors_json.json: um per full-resolution pixel
VISIUM_HD_BIN_SIZE_KEY = "bin_size_um"
VISIUM_HD_DEFAULT_BIN_UM = 8  # DESIGN 10: without a choice, 55 um discs on a 100 um hex grid from the 8 um bins
VISIUM_HD_DEFAULT_DISC_UM = 55.0
VISIUM_HD_DEFAULT_PITCH_UM = 100.0
VISIUM_HD_MIN_DISC_COVER = 0.5  # a pseudo-spot is kept when in-tissue bins cover at least this share of its disc
OBS_N_BINS = "n_bins"  # Visium HD pseudo-spots: how many bins were summed into the spot
# patch field of view per micron of spot width: the paper's 154.6 um for a 100 um legacy ST spot
FOV_PER_SPOT_UM = DEFAULT_SPOT_UM / LEGACY_ST_SPOT_DIAMETER_UM

# --------------------------------------------------------------------------------------------------- HEST-1k
HEST_PIXEL_SIZE_KEY = "pixel_size_um_estimated"

# ------------------------------------------------------------------------------------------------- run folders
RUN_CONFIG = "config.yaml"  # resolved config written next to every run's outputs
RUN_METRICS = "metrics.csv"
CKPT_LAST = "last.ckpt"
CKPT_BEST = "best.ckpt"
CKPT_BEST_TEST = "best_test_FLATTERING.ckpt"  # `train.select_on_test`: the epoch with the best TEST-section MSE
# the benchmark variant (label suffix "[...]") of a model scored with its test-selected epoch: never an honest number
FLATTERING_VARIANT = "test-selected, flattering"
PLAIN_FLATTERING_VARIANT = f"plain, {FLATTERING_VARIANT}"  # the same epoch without the test-time recipe
TEST_MSE_FLATTERING = "test_mse_FLATTERING"  # the per-epoch test MSE column of a run's metrics.csv
CKPT_DIR = "checkpoints"
CKPT_META_KEY = "hifusion"  # the checkpoint entry holding what prediction needs besides the weights
# meta entry (absent unless an encoder is a preset): image input name ('spot', 'region') -> how the cached patch
# becomes that encoder's input (centre crop, resize, the preset's mean/std); see `models.presets.input_view`
META_INPUTS = "inputs"
# the other entries of the checkpoint metadata; read and written by `checkpoint_meta.CheckpointMeta` only
META_MODEL = "model"  # {"name": registry name, "options": constructor keyword arguments}
META_MODEL_NAME = "name"
META_MODEL_OPTIONS = "options"
META_PANEL = "panel"  # gene names, in the order of the model's outputs
META_LABEL = "label"  # the label transform (log1p_cpm, ...)
META_PATCH = "patch"  # the patch geometry, `geometry.PatchGeometry.to_dict`
META_NORMALISATION = "normalisation"  # {"mode": "patch"} or {"mode": "dataset", "mean", "std"}
META_STAIN = "stain"  # `stain.stain_meta`: augmentation, normalisation, training reference
META_TRAIN_MEAN = "train_mean"  # per-gene training label mean (`calibrate: centre`)
META_VERSION = "version"  # the package version that wrote the checkpoint
META_TRAIN_SECTIONS = "train_sections"
META_LABEL_SCALE = "label_scale"  # `train.scale_labels: gene`: {"mean", "std"} per gene
IMAGE_INPUTS = ("spot", "region")  # the image inputs of a batch, in the order models take them

# ----------------------------------------------------------------------------------------------- prediction files
# DESIGN 10: the prediction in layers['predicted'] and in X (so plotting and old code work), never mixed with counts;
# uns['hifusion'] says the unit, model, checkpoint sha256, recipe and package version.
LAYER_PREDICTED = "predicted"
LAYER_TRUTH = "truth"  # benchmark files: the measured label of the same spots, in the same unit
UNS_UNIT = "unit"
UNS_CHECKPOINT_SHA256 = "checkpoint_sha256"
UNS_RECIPE = "recipe"
UNS_VERSION = "version"
PREDICTIONS_H5AD = "predictions.h5ad"  # predict: the slide's predictions (and their CSV twin)
PREDICTIONS_CSV = "predictions.csv"
PREDICTIONS_ZARR = "predictions.zarr"  # predict --format spatialdata
MAPS_DIR = "maps"  # predict: one <gene>.png per drawn gene
INDEX_HTML = "index.html"  # predict: the page showing the maps and what made them
# SpatialData elements: one coordinate system, in microns
SD_COORDINATE_SYSTEM = "global"
SD_IMAGE = "he"
SD_SPOTS = "spots"
SD_TABLE = "table"
SD_REGION_KEY = "region"
SD_INSTANCE_KEY = "spot_id"
SD_BARCODE = "barcode"

MEAN_PROFILE = "mean_profile"  # the floor model every benchmark scores beside the others (`config.with_floor`)

# ---------------------------------------------------------------------------------------------- marker genes
MARKER_GENES = ("ERBB2", "KRT19", "CD74", "TMSB10", "FASN", "GNAS")

# ------------------------------------------------------------------------------------------ benchmark results folder
RUNS_DIR = "runs"  # runs/<split>/<model>/: a model's checkpoints, predictions and done marker on a split
DONE_JSON = "done.json"  # a model's finished run on a split (its fit info); `--resume` skips runs that have one
PREDICTIONS_NPZ = "predictions.npz"  # a run's test predictions per section and test-time variant
MEMBER_NPZ = "member.npz"  # seed<k>/member.npz: one seed's predictions of an ensemble
RUN_JSON = "run.json"  # the command, resolved config, splits, panels, timings and environment of a benchmark
PREDICTIONS_DIR = "predictions"  # predictions/<model>/[<split>/]<section>.h5ad (and .zarr) with truth beside
ZARR_SUFFIX = ".zarr"
FIGURES_DIR = "figures"
MAPS_PNG = "maps_{name}.png"  # figures: marker-gene maps of one section
TRAINING_CURVES_PNG = "training_curves.png"
ABLATION_MD = "ablation.md"
ABLATION_CSV = "ablation.csv"
ABLATION_JSON = "ablation.json"  # the axes, seeds and every variant's options
ABLATION_PNG = "ablation_{option}.png"
EFFICIENCY_MD = "efficiency.md"  # `hifusion efficiency` default (a .csv twin beside it)

# ------------------------------------------------------------------------------------------------ report files
REPORT_MD = "report.md"  # the benchmark's human-readable summary
PER_GENE_CSV = "per_gene.csv"  # per model, section and gene: pcc, mse, mae

# Shrink factors of `calibrate: shrink` (fitted on validation spots by the benchmark), beside the checkpoints, keyed
# by the test-time options they were fitted under ("adabn=0,tta=0"); `predict --calibrate shrink` reads them.
CALIBRATION_JSON = "calibration.json"
# The test-time recipe (adabn, tta, calibrate, smooth_um, gene_pcs) of the benchmark that fitted the checkpoints beside
# it: `predict` follows it unless told otherwise, so a slide is predicted the way the model was evaluated.
RECIPE_JSON = "recipe.json"
# In a recipe with gene_pcs > 0: the training labels' co-expression axes {panel, axes (k x G), sd (G)}.
RECIPE_GENE_AXES = "gene_axes"

# HEST-Benchmark task folders (mahmoodlab/HEST, `bench_data/<task>/`): fold CSVs list samples with paths (relative to
# the task folder) to a patch file and an expression file; the gene list is a JSON object {"genes": [...]}.
HEST_SPLITS_DIR = "splits"
HEST_TRAIN_SPLIT = "train_{i}.csv"
HEST_TEST_SPLIT = "test_{i}.csv"
HEST_SPLIT_COLUMNS = ("sample_id", "patches_path", "expr_path")
HEST_GENES_JSON = "var_50genes.json"
HEST_PATCH_IMG = "img"  # (N, H, W, 3) uint8 patches
HEST_PATCH_BARCODES = ("barcode", "barcodes")  # (N, 1) bytes: the expression file's obs names
HEST_PATCH_COORDS = "coords"
HEST_PATCH_MPP = 0.5  # HEST-Benchmark patches: 224 px at 0.5 um/px (112 um); `hest-bench --patch-mpp` overrides
HEST_RESULTS_CSV = "hest_bench.csv"  # per fold and gene: pearson
HEST_SUMMARY_JSON = "hest_bench.json"

# ------------------------------------------------------------------------------------- self-supervised pretraining
PRETRAIN_WEIGHTS = "encoder.safetensors"  # the trunk's weights (timm key layout), read by `encoder_weights` options
PRETRAIN_STATE = "pretrain.ckpt"  # resumable state: online/target networks, optimizer, position in the schedule
PRETRAIN_LOG = "pretrain_log.csv"  # one row per epoch: loss, learning rate, momentum, tiles, seconds
PRETRAIN_META_KEY = "hifusion_pretrain"  # safetensors metadata entry holding what the pretraining saw (JSON)
PRETRAIN_DIR = "pretrain"  # benchmark: runs/<split>/pretrain/<encoder>/ holds a fold's pretrained encoder
# A model opts into its split's pretrained encoder by this value of a weights option; the option names the encoder
# option it belongs to (HiFusion: spot and region encoders; ST-Net, the linear probe, ...: `encoder`).
PRETRAINED = "pretrained"
WEIGHT_OPTIONS = {"spot_encoder_weights": "spot_encoder", "region_encoder_weights": "region_encoder",
                  "encoder_weights": "encoder"}
