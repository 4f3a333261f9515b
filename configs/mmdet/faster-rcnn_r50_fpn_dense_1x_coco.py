# Faster R-CNN R50-FPN 1x on COCO 2017, dense baseline through the N:M code path (method='dense').
# COCO at $COCO_ROOT (default data/coco): annotations/instances_{train,val}2017.json, train2017/, val2017/.
# Backbone: the best-top-1 ResNet-50 of our classification trainer (nm_plugins.train.classify), as written by
# `IMAGENET_ROOT=... make reproduce-imagenet`: $IMAGENET_CKPT_DIR/resnet50_<method>[_<N>_<M>]/model_best.pth with
# IMAGENET_CKPT_DIR defaulting to runs/imagenet (the trainer's last epoch is checkpoint.pt next to it);
# override with --cfg-options model.backbone.init_cfg.checkpoint=PATH (a state_dict or {"model": ...}).
_base_ = 'mmdet::faster_rcnn/faster-rcnn_r50_fpn_1x_coco.py'
custom_imports = dict(imports=['nm_plugins.mmdet'], allow_failed_imports=False)

model = dict(backbone=dict(
    conv_cfg=dict(type='SRSTEConv2d', pattern='2:4', method='dense', decay=2e-4),
    init_cfg=dict(type='Pretrained', checkpoint='{{$IMAGENET_CKPT_DIR:runs/imagenet}}/resnet50_dense/model_best.pth')))

data_root = '{{$COCO_ROOT:data/coco}}/'
train_dataloader = dict(dataset=dict(data_root=data_root))
val_dataloader = dict(dataset=dict(data_root=data_root))
test_dataloader = val_dataloader
val_evaluator = dict(ann_file=data_root + 'annotations/instances_val2017.json')
test_evaluator = val_evaluator

custom_hooks = [dict(type='NMSparsityHook', interval=50)]
