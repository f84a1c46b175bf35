# Runtime settings shared by every config (the user guide's "运行设置").
checkpoint_config = dict(interval=1)   # save a checkpoint every epoch
log_config = dict(interval=50, hooks=[dict(type='TextLoggerHook')])
dist_params = dict(backend='nccl')
log_level = 'INFO'
load_from = None                       # weights to fine-tune from
resume_from = None                     # checkpoint to resume training from
