"""Every configuration key with its default and a one-line comment.

Key names follow the official Swin Transformer release, so its YAML files load unchanged. Keys this project
adds sit beside the official ones and are marked "(new)". YAML files under configs/ hold only differences.
"""
from yacs.config import CfgNode as CN

_C = CN()
_C.BASE = [""]  # YAML files to load first, paths relative to the including file

# ----------------------------------------------------------------------------------------------------------
# Data
# ----------------------------------------------------------------------------------------------------------
_C.DATA = CN()
_C.DATA.BATCH_SIZE = 128  # images per process per micro-step
_C.DATA.DATA_PATH = ""  # data set root (ImageNet folder/zip layout, IN-22K map files, Fashion-MNIST idx files)
_C.DATA.DATASET = "imagenet"  # imagenet | imagenet22K | fashion_mnist | synthetic
_C.DATA.IMG_SIZE = 224  # input resolution (square)
_C.DATA.INTERPOLATION = "bicubic"  # resize interpolation: random | bilinear | bicubic
_C.DATA.MEAN = []  # (new) input normalization mean (RGB, 0-1); empty: the model's own (a timm model's pretrained
                   # config), else ImageNet's
_C.DATA.STD = []  # (new) input normalization std; empty: as DATA.MEAN
_C.DATA.ZIP_MODE = False  # read the official zipped layout (train.zip + train_map.txt)
_C.DATA.CACHE_MODE = "part"  # zip and parquet layouts held in memory: no | part (each rank its shard) | full
_C.DATA.PIN_MEMORY = True  # pin host memory for faster copies (used on CUDA only)
_C.DATA.NUM_WORKERS = 8  # data loader worker processes per rank
_C.DATA.MASK_PATCH_SIZE = 32  # official SimMIM key, unused here (kept so official YAML files load)
_C.DATA.MASK_RATIO = 0.6  # official SimMIM key, unused here (kept so official YAML files load)
_C.DATA.PERSISTENT_WORKERS = True  # (new) keep workers alive between epochs
_C.DATA.PREFETCH_FACTOR = 2  # (new) batches prefetched per worker
_C.DATA.DRAFT_DECODE = True  # (new) decode large JPEGs at reduced scale when the training crop allows it
_C.DATA.FAST_RESIZE = True  # (new) resize training crops with torch's uint8 antialiased kernels (PIL's filters)
_C.DATA.NORMALIZE_ON_DEVICE = True  # (new) loaders yield uint8 images; normalize + random erasing on the device
_C.DATA.ON_CORRUPT = "error"  # (new) unreadable image: error (stop, naming the file) | skip (log, replace, count)
_C.DATA.SYNTHETIC_TRAIN_SIZE = 1281  # (new) images in the synthetic training split
_C.DATA.SYNTHETIC_VAL_SIZE = 50  # (new) images in the synthetic validation split

# ----------------------------------------------------------------------------------------------------------
# Model
# ----------------------------------------------------------------------------------------------------------
_C.MODEL = CN()
_C.MODEL.TYPE = "swin"  # swin | swinv2 | pvt (PVT v1: MODEL.NAME pvt_tiny ... pvt_large) | timm (MODEL.NAME: timm model)
_C.MODEL.NAME = "swin_tiny_patch4_window7_224"  # model name; also names the run directory
_C.MODEL.PRETRAINED = ""  # weights to fine-tune from (official, timm or torchvision layout)
_C.MODEL.RESUME = ""  # checkpoint to resume training (or evaluate) from
_C.MODEL.NUM_CLASSES = 1000  # classifier outputs; must agree with the data set
_C.MODEL.DROP_RATE = 0.0  # dropout rate
_C.MODEL.DROP_PATH_RATE = 0.1  # stochastic depth rate (linearly increasing over blocks)
_C.MODEL.LABEL_SMOOTHING = 0.1  # label smoothing when mixup/cutmix is off
_C.MODEL.SYNC_BN = False  # (new) SyncBatchNorm over the ranks (CUDA only); off: each rank's own statistics, averaged
                          # before every evaluation and save

_C.MODEL.SWIN = CN()
_C.MODEL.SWIN.PATCH_SIZE = 4  # patch embedding stride and kernel
_C.MODEL.SWIN.IN_CHANS = 3  # input channels
_C.MODEL.SWIN.EMBED_DIM = 96  # channels of the first stage
_C.MODEL.SWIN.DEPTHS = [2, 2, 6, 2]  # blocks per stage
_C.MODEL.SWIN.NUM_HEADS = [3, 6, 12, 24]  # attention heads per stage
_C.MODEL.SWIN.WINDOW_SIZE = 7  # attention window M (M x M tokens)
_C.MODEL.SWIN.MLP_RATIO = 4.0  # MLP hidden width / embed width
_C.MODEL.SWIN.QKV_BIAS = True  # bias in the qkv projection
_C.MODEL.SWIN.QK_SCALE = None  # override of head_dim ** -0.5
_C.MODEL.SWIN.APE = False  # absolute position embedding
_C.MODEL.SWIN.PATCH_NORM = True  # LayerNorm after patch embedding
_C.MODEL.SWIN.SHIFT = True  # (new) shifted windows in odd blocks; False for the paper's ablation
_C.MODEL.SWIN.REL_POS_BIAS = True  # (new) relative position bias; False for the paper's ablation
_C.MODEL.SWIN.APPEARANCE = True  # (new) query-key term in the attention logits; False: softmax(bias) @ v alone, the
                                 # paper's ablation "rel. pos. w/o app."
_C.MODEL.SWIN.ATTN_IMPL = "auto"  # (new) attention kernel: auto (per device) | eager | sdpa

# Swin Transformer V2 (MODEL.TYPE swinv2), the official release's keys and defaults
_C.MODEL.SWINV2 = CN()
_C.MODEL.SWINV2.PATCH_SIZE = 4  # patch embedding stride and kernel
_C.MODEL.SWINV2.IN_CHANS = 3  # input channels
_C.MODEL.SWINV2.EMBED_DIM = 96  # channels of the first stage
_C.MODEL.SWINV2.DEPTHS = [2, 2, 6, 2]  # blocks per stage
_C.MODEL.SWINV2.NUM_HEADS = [3, 6, 12, 24]  # attention heads per stage
_C.MODEL.SWINV2.WINDOW_SIZE = 7  # attention window M (M x M tokens)
_C.MODEL.SWINV2.MLP_RATIO = 4.0  # MLP hidden width / embed width
_C.MODEL.SWINV2.QKV_BIAS = True  # q and v biases
_C.MODEL.SWINV2.APE = False  # absolute position embedding
_C.MODEL.SWINV2.PATCH_NORM = True  # LayerNorm after patch embedding
_C.MODEL.SWINV2.PRETRAINED_WINDOW_SIZES = [0, 0, 0, 0]  # per stage, the window of the weights fine-tuned from (0: none)
_C.MODEL.SWINV2.ATTN_IMPL = "auto"  # (new) attention kernel: auto (fused SDPA on CUDA, eager elsewhere) | eager | sdpa

# ----------------------------------------------------------------------------------------------------------
# Training
# ----------------------------------------------------------------------------------------------------------
_C.TRAIN = CN()
_C.TRAIN.START_EPOCH = 0  # first epoch (set by resume, not by hand)
_C.TRAIN.EPOCHS = 300  # training epochs
_C.TRAIN.WARMUP_EPOCHS = 20.0  # linear warmup epochs (prefix of the schedule; a fraction of an epoch too)
_C.TRAIN.TIME_BUDGET = 0.0  # (new) minutes for the run: after the first epoch it keeps the updates that fit; 0: off
_C.TRAIN.WEIGHT_DECAY = 0.05  # AdamW weight decay (not on norms, biases, position tables)
_C.TRAIN.BASE_LR = 5e-4  # learning rate per 512 images (linearly scaled by total batch)
_C.TRAIN.WARMUP_LR = 5e-7  # warmup start learning rate per 512 images
_C.TRAIN.MIN_LR = 5e-6  # final cosine learning rate per 512 images
_C.TRAIN.CLIP_GRAD = 5.0  # gradient norm clip; 0 or None disables it
_C.TRAIN.AUTO_RESUME = True  # resume from the newest loadable checkpoint in the run directory
_C.TRAIN.ACCUMULATION_STEPS = 1  # micro-steps per optimizer update
_C.TRAIN.USE_CHECKPOINT = False  # gradient checkpointing (less memory, more compute)
_C.TRAIN.KEEP_LAST = 3  # (new) epoch checkpoints kept besides the best one
_C.TRAIN.MAX_BAD_STEPS = 20  # (new) consecutive non-finite steps before the run stops
_C.TRAIN.COMPILE = False  # (new) wrap the model in torch.compile
_C.TRAIN.DETERMINISTIC = False  # (new) repeatable GPU kernels (deterministic algorithms, no cuDNN autotuning), slower

_C.TRAIN.LR_SCHEDULER = CN()
_C.TRAIN.LR_SCHEDULER.NAME = "cosine"  # cosine | step | multistep
_C.TRAIN.LR_SCHEDULER.DECAY_EPOCHS = 30  # step: epochs between decays
_C.TRAIN.LR_SCHEDULER.DECAY_RATE = 0.1  # step: decay factor
_C.TRAIN.LR_SCHEDULER.WARMUP_PREFIX = True  # warmup steps come before the decay schedule, not inside it
_C.TRAIN.LR_SCHEDULER.GAMMA = 0.1  # multistep: decay factor
_C.TRAIN.LR_SCHEDULER.MULTISTEPS = []  # multistep: epochs at which to decay

_C.TRAIN.OPTIMIZER = CN()
_C.TRAIN.OPTIMIZER.NAME = "adamw"  # adamw | sgd
_C.TRAIN.OPTIMIZER.EPS = 1e-8  # AdamW epsilon
_C.TRAIN.OPTIMIZER.BETAS = (0.9, 0.999)  # AdamW betas
_C.TRAIN.OPTIMIZER.MOMENTUM = 0.9  # SGD momentum (Nesterov)

_C.TRAIN.LAYER_DECAY = 1.0  # official key for layer-wise lr decay; only 1.0 (off) is supported

# ----------------------------------------------------------------------------------------------------------
# Augmentation
# ----------------------------------------------------------------------------------------------------------
_C.AUG = CN()
_C.AUG.COLOR_JITTER = 0.4  # colour jitter factor (a no-op while RandAugment is on)
_C.AUG.AUTO_AUGMENT = "rand-m9-mstd0.5-inc1"  # timm RandAugment policy; "none" disables it
_C.AUG.REPROB = 0.25  # random erasing probability
_C.AUG.REMODE = "pixel"  # random erasing fill mode
_C.AUG.RECOUNT = 1  # random erasing count
_C.AUG.MIXUP = 0.8  # mixup alpha; 0 disables mixup
_C.AUG.CUTMIX = 1.0  # cutmix alpha; 0 disables cutmix
_C.AUG.CUTMIX_MINMAX = None  # cutmix box ratio bounds; overrides CUTMIX alpha when set
_C.AUG.MIXUP_PROB = 1.0  # probability of applying mixup or cutmix to a batch
_C.AUG.MIXUP_SWITCH_PROB = 0.5  # probability of cutmix instead of mixup when both are on
_C.AUG.MIXUP_MODE = "batch"  # batch | pair | elem
_C.AUG.HFLIP = 0.5  # (new) horizontal flip probability of training images (timm's --hflip)
_C.AUG.SMALL_CROP_PADDING = 4  # (new) padding of the random crop used instead of RandomResizedCrop when IMG_SIZE <= 32
_C.AUG.REPEATED_AUG = False  # (new) repeated augmentation sampler (DeiT)
_C.AUG.REPEATED_AUG_REPEATS = 3  # (new) copies of each image per epoch under repeated augmentation

# ----------------------------------------------------------------------------------------------------------
# Testing
# ----------------------------------------------------------------------------------------------------------
_C.TEST = CN()
_C.TEST.CROP = True  # resize to 256/224 x IMG_SIZE then center crop; False resizes straight to IMG_SIZE
_C.TEST.CROP_PCT = 0.0  # (new) center-crop fraction with TEST.CROP (resize to IMG_SIZE / CROP_PCT); 0: the model's
                        # own (a timm model's pretrained config), else 224/256 as officially
_C.TEST.SEQUENTIAL = False  # official key; evaluation is always exact and sharded without padding here
_C.TEST.SHUFFLE = False  # official key; evaluation order does not change its counts here
_C.TEST.USE_EMA = False  # (new) report the EMA weights in the final eval.json

# ----------------------------------------------------------------------------------------------------------
# Model EMA (new)
# ----------------------------------------------------------------------------------------------------------
_C.MODEL_EMA = CN()
_C.MODEL_EMA.ENABLE = False  # keep an exponential moving average of the weights
_C.MODEL_EMA.DECAY = 0.9998  # EMA decay per optimizer update
_C.MODEL_EMA.WARMUP = False  # ramp the decay up over the first updates

# ----------------------------------------------------------------------------------------------------------
# Misc
# ----------------------------------------------------------------------------------------------------------
_C.ENABLE_AMP = False  # deprecated official key, kept so older YAML files load; use AMP_ENABLE
_C.AMP_ENABLE = True  # mixed precision (autocast)
_C.AMP_DTYPE = "auto"  # (new) autocast dtype: auto (bf16 where supported, else fp16) | bfloat16 | float16
_C.AMP_OPT_LEVEL = ""  # deprecated official apex key, must stay empty
_C.OUTPUT = "output"  # root of run directories: <OUTPUT>/<MODEL.NAME>/<TAG>/
_C.TAG = "default"  # run name inside <OUTPUT>/<MODEL.NAME>/
_C.SAVE_FREQ = 1  # save a checkpoint every N epochs (and always at the end)
_C.EVAL_FREQ = 1  # (new) evaluate every N epochs; always after the last, and after the first under TRAIN.TIME_BUDGET
                 # (which measures it); 0: only those
_C.PRINT_FREQ = 10  # log every N optimizer steps
_C.SEED = 0  # random seed (each rank adds its rank)
_C.EVAL_MODE = False  # evaluate only
_C.THROUGHPUT_MODE = False  # measure inference throughput only
_C.LOCAL_RANK = 0  # official key; the rank comes from torchrun's environment here
_C.FUSED_WINDOW_PROCESS = False  # official CUDA-kernel key: accepted, True is logged as having no effect here
_C.FUSED_LAYERNORM = False  # official apex key: accepted, True is logged as having no effect here
_C.DEVICE = "auto"  # (new) auto | cpu | cuda | cuda:N
_C.DIST_TIMEOUT = 30  # (new) minutes a collective waits for a missing rank before failing


def get_defaults() -> CN:
    """A fresh, mutable copy of the defaults."""
    return _C.clone()
