"""Model descriptions for the profile model (coordinator/src/synth.rs), from the architectures.

Walks the torchvision ResNet, VGG, DenseNet and MobileNetV2 definitions and BERT-large
(seq 128) layer by layer and counts, per item at 224 px: MACs (GFLOPs = 2 x MACs),
parameters, operators one eager PyTorch pass launches (`kernels`: conv, batch-norm,
activation, pool, add, cat, linear, ...) and the FP32 bytes of every operator's output
(`activation_mb`). MACs and parameters match the published torchvision / BERT figures,
which checks the walk. Used for examples/apps/measured/*.toml and the ResNet and VGG
variants of examples/apps/{social,traffic}.toml.

    python3 scripts/model_descs.py
"""
class W:
    def __init__(s, c, h, w=None):
        s.c, s.h, s.w = c, h, (w if w is not None else h)
        s.macs = 0; s.params = 0; s.ops = 0; s.act = 0
    def _out(s, c, h, w):
        s.c, s.h, s.w = c, h, w; s.ops += 1; s.act += c*h*w
    def conv(s, cout, k, st=1, g=1, bias=False, pad=None):
        pad = k//2 if pad is None else pad
        h = (s.h + 2*pad - k)//st + 1; w = (s.w + 2*pad - k)//st + 1
        s.macs += cout*h*w*(s.c//g)*k*k; s.params += cout*(s.c//g)*k*k + (cout if bias else 0)
        s._out(cout, h, w)
    def bn(s): s.params += 2*s.c; s._out(s.c, s.h, s.w)
    def relu(s): s._out(s.c, s.h, s.w)
    def pool(s, k, st, pad=0):
        h = (s.h + 2*pad - k)//st + 1; w = (s.w + 2*pad - k)//st + 1; s._out(s.c, h, w)
    def gap(s): s._out(s.c, 1, 1)
    def linear(s, cout):
        n = s.c*s.h*s.w; s.macs += n*cout; s.params += n*cout + cout; s._out(cout, 1, 1)
    def add(s): s._out(s.c, s.h, s.w)
    def cat(s, c): s._out(c, s.h, s.w)

def resnet(blocks, bottleneck=True):
    x = W(3, 224); x.conv(64, 7, 2, pad=3); x.bn(); x.relu(); x.pool(3, 2, 1)
    exp = 4 if bottleneck else 1
    for i, n in enumerate(blocks):
        width = 64*2**i
        for j in range(n):
            st = 2 if (j == 0 and i > 0) else 1
            c0, h0, w0 = x.c, x.h, x.w
            if bottleneck:
                x.conv(width, 1); x.bn(); x.relu(); x.conv(width, 3, st); x.bn(); x.relu(); x.conv(width*4, 1); x.bn()
            else:
                x.conv(width, 3, st); x.bn(); x.relu(); x.conv(width, 3); x.bn()
            if j == 0 and (st != 1 or c0 != width*exp):
                y = W(c0, h0, w0); y.conv(width*exp, 1, st, pad=0); y.bn()
                x.macs += y.macs; x.params += y.params; x.ops += y.ops; x.act += y.act
            x.add(); x.relu()
    x.gap(); x.linear(1000)
    return x

def vgg(cfg):
    x = W(3, 224)
    for v in cfg:
        if v == 'M': x.pool(2, 2)
        else: x.conv(v, 3, bias=True); x.relu()
    x.pool(1, 1); x.c, x.h, x.w = 512, 7, 7  # adaptive avgpool to 7x7 (identity at 224)
    x.linear(4096); x.relu(); x.linear(4096); x.relu(); x.linear(1000)
    return x

def densenet(blocks, growth=32, init=64):
    x = W(3, 224); x.conv(init, 7, 2, pad=3); x.bn(); x.relu(); x.pool(3, 2, 1)
    c = init
    for i, n in enumerate(blocks):
        for j in range(n):
            if j > 0: x.cat(c)       # torch.cat of the previous features (eager: one kernel)
            x.c = c; x.bn(); x.relu(); x.conv(4*growth, 1); x.bn(); x.relu(); x.conv(growth, 3)
            c += growth
        x.cat(c)
        if i < len(blocks)-1:
            x.bn(); x.relu(); x.conv(c//2, 1); x.pool(2, 2); c //= 2
    x.bn(); x.relu(); x.gap(); x.linear(1000)
    return x

def mobilenetv2():
    x = W(3, 224); x.conv(32, 3, 2); x.bn(); x.relu()
    cfg = [(1,16,1,1),(6,24,2,2),(6,32,3,2),(6,64,4,2),(6,96,3,1),(6,160,3,2),(6,320,1,1)]
    for t, c, n, s in cfg:
        for j in range(n):
            st = s if j == 0 else 1; cin = x.c; hid = cin*t
            if t != 1: x.conv(hid, 1); x.bn(); x.relu()
            x.conv(hid, 3, st, g=hid); x.bn(); x.relu(); x.conv(c, 1); x.bn()
            if st == 1 and cin == c: x.add()
    x.conv(1280, 1); x.bn(); x.relu(); x.gap(); x.linear(1000)
    return x

def bert_large(seq=128, d=1024, heads=16, ff=4096, layers=24, vocab=30522):
    x = W(d, seq, 1)
    x.params = (vocab + 512 + 2)*d + 2*d
    e = seq*d
    x.ops += 5; x.act += 5*e   # 3 embedding lookups, 2 adds; then LayerNorm
    x.ops += 1; x.act += e
    for _ in range(layers):
        x.macs += 3*seq*d*d; x.ops += 3; x.act += 3*e                # Q, K, V
        x.ops += 3; x.act += 3*e                                      # head transposes (copies)
        x.macs += heads*seq*seq*(d//heads); x.ops += 1; x.act += heads*seq*seq   # QK^T
        x.ops += 3; x.act += 3*heads*seq*seq                          # scale, mask add, softmax
        x.macs += heads*seq*seq*(d//heads); x.ops += 1; x.act += e    # AV
        x.ops += 1; x.act += e                                        # permute + contiguous
        x.macs += seq*d*d; x.ops += 1; x.act += e                     # attention output dense
        x.ops += 2; x.act += 2*e                                      # residual add, LayerNorm
        x.macs += seq*d*ff; x.ops += 2; x.act += 2*seq*ff             # intermediate dense, GELU
        x.macs += seq*ff*d; x.ops += 1; x.act += e                    # output dense
        x.ops += 2; x.act += 2*e                                      # residual add, LayerNorm
        x.params += 4*d*d + 4*d + 2*d*ff + ff + d + 4*d
    x.macs += d*d; x.params += d*d + d; x.ops += 2; x.act += 2*d    # pooler dense + tanh
    return x

EXTRA = {
    'resnet18': resnet([2,2,2,2], False), 'resnet34': resnet([3,4,6,3], False), 'resnet152': resnet([3,8,36,3]),
    'vgg11': vgg([64,'M',128,'M',256,256,'M',512,512,'M',512,512,'M']),
    'vgg13': vgg([64,64,'M',128,128,'M',256,256,'M',512,512,'M',512,512,'M']),
}
MODELS = {
    'bert': bert_large(), 'densenet121': densenet([6,12,24,16]), 'densenet169': densenet([6,12,32,32]),
    'mobilenetv2': mobilenetv2(), 'resnet50': resnet([3,4,6,3]), 'resnet101': resnet([3,4,23,3]),
    'vgg16': vgg([64,64,'M',128,128,'M',256,256,256,'M',512,512,512,'M',512,512,512,'M']),
    'vgg19': vgg([64,64,'M',128,128,'M',256,256,256,256,'M',512,512,512,512,'M',512,512,512,512,'M']),
}
if __name__ == '__main__':
    for n, x in {**MODELS, **EXTRA}.items():
        print(f'{n:12} GMACs {x.macs/1e9:6.3f} GFLOPs {2*x.macs/1e9:6.2f} params {x.params/1e6:7.2f}M ops {x.ops:4d} act {x.act*4/1e6:7.1f} MB(fp32)')
