# Mask R-CNN proxy on the Fashion-MNIST COCO proxy (make coco-proxy-data), dense baseline.
# Shrunk for 2 CPU cores (kept: the detector with its mask branch, the N:M layers, the method/pattern grid):
#   backbone ResNet-50 -> ResNet-18 at base width 16, trained from scratch (no ImageNet init);
#   FPN 256 -> 32 channels from stride 8 (4 levels), RPN 32 channels, anchors 3x stride;
#   RoI box head FC 1024 -> 128, mask head 4x256 -> 2x32 convs; RoI samples 512 -> 64, RPN samples 256 -> 128;
#   input 1333x800 -> 96x96, batch 16 -> 4, SGD lr 0.02 -> AdamW lr 2e-3 (converges in far fewer steps),
#   1x schedule -> 500 iterations (two passes over the 1000 proxy train images); 200 val images.
_base_ = 'mmdet::mask_rcnn/mask-rcnn_r50_fpn_1x_coco.py'
custom_imports = dict(imports=['nm_plugins.mmdet'], allow_failed_imports=False)

sparse_conv = dict(type='SRSTEConv2d', pattern='2:4', method='dense', decay=2e-4)
model = dict(
    backbone=dict(depth=18, base_channels=16, frozen_stages=-1, norm_eval=False, conv_cfg=sparse_conv,
                  init_cfg=None),
    neck=dict(in_channels=[16, 32, 64, 128], out_channels=32, start_level=1, num_outs=4),
    rpn_head=dict(in_channels=32, feat_channels=32,
                  anchor_generator=dict(scales=[3], strides=[8, 16, 32, 64])),
    roi_head=dict(bbox_roi_extractor=dict(out_channels=32, featmap_strides=[8, 16, 32]),
                  bbox_head=dict(in_channels=32, fc_out_channels=128, num_classes=10),
                  mask_roi_extractor=dict(out_channels=32, featmap_strides=[8, 16, 32]),
                  mask_head=dict(num_convs=2, in_channels=32, conv_out_channels=32, num_classes=10)),
    train_cfg=dict(rpn=dict(sampler=dict(num=128)), rpn_proposal=dict(nms_pre=1000, max_per_img=300),
                   rcnn=dict(sampler=dict(num=64))),
    test_cfg=dict(rpn=dict(nms_pre=500, max_per_img=200)))

data_root = '{{$COCO_PROXY_ROOT:data/coco_fmnist}}/'
metainfo = dict(classes=('T-shirt/top', 'Trouser', 'Pullover', 'Dress', 'Coat',
                         'Sandal', 'Shirt', 'Sneaker', 'Bag', 'Ankle boot'))
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='Resize', scale=(96, 96), keep_ratio=True),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackDetInputs')]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(96, 96), keep_ratio=True),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='PackDetInputs', meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor'))]
train_dataloader = dict(
    batch_size=4, num_workers=0, persistent_workers=False,
    dataset=dict(data_root=data_root, metainfo=metainfo, ann_file='annotations/instances_train.json',
                 data_prefix=dict(img='train/'), filter_cfg=dict(filter_empty_gt=True, min_size=4),
                 pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=8, num_workers=0, persistent_workers=False,
    dataset=dict(data_root=data_root, metainfo=metainfo, ann_file='annotations/instances_val.json',
                 data_prefix=dict(img='val/'), pipeline=test_pipeline))
test_dataloader = val_dataloader
val_evaluator = dict(ann_file=data_root + 'annotations/instances_val.json', metric=['bbox', 'segm'])
test_evaluator = val_evaluator

max_epochs = 2  # two passes over the 1000 training images: 500 iterations of batch 4
train_cfg = dict(max_epochs=max_epochs, val_interval=max_epochs)
param_scheduler = [
    dict(type='LinearLR', start_factor=0.01, by_epoch=False, begin=0, end=25),
    dict(type='MultiStepLR', by_epoch=False, begin=0, end=500, milestones=[420], gamma=0.1)]
optim_wrapper = dict(optimizer=dict(_delete_=True, type='AdamW', lr=0.002, weight_decay=1e-4),
                     clip_grad=dict(max_norm=10, norm_type=2))
auto_scale_lr = dict(enable=False, base_batch_size=4)

custom_hooks = [dict(type='NMSparsityHook', interval=20)]
default_hooks = dict(logger=dict(interval=20),
                     checkpoint=dict(interval=max_epochs, max_keep_ckpts=1),
                     visualization=dict(draw=False))
env_cfg = dict(dist_cfg=dict(backend='gloo'))
randomness = dict(seed=0)
