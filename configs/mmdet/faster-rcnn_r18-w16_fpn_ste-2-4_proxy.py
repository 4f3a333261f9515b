# The faster-rcnn proxy with an STE 2:4 backbone (every conv but the RGB stem), trained from scratch: the SR-STE
# 2:4 row without the sparse-refined decay (lambda_W = 0), so SR-STE vs STE is judged on detection too.
_base_ = './faster-rcnn_r18-w16_fpn_srste-2-4_proxy.py'
model = dict(backbone=dict(conv_cfg=dict(method='ste')))
