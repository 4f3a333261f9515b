# The faster-rcnn proxy with an SR-STE 2:8 backbone (every conv but the RGB stem), trained from scratch.
_base_ = './faster-rcnn_r18-w16_fpn_dense_proxy.py'
model = dict(backbone=dict(conv_cfg=dict(pattern='2:8', method='srste')))
