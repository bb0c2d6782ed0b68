"""Max |jaxnorm − PyTorch| of batch_norm over 4 training steps and eval, float64, both conventions.

    python benchmarks/studies/batch_norm_oracle.py
"""
import jax, jax.numpy as jnp, numpy as np, torch
jax.config.update('jax_enable_x64', True)
import jaxnorm as jn
rng=np.random.default_rng(0); C=6
g=rng.standard_normal(C); b=rng.standard_normal(C)
worst={}
for conv in ('flax','torch'):
    st=jn.BatchStats.init(C,jnp.float64)
    tbn=torch.nn.BatchNorm2d(C,eps=1e-5,momentum=0.1 if conv=='torch' else 0.01).double()
    with torch.no_grad(): tbn.weight.copy_(torch.tensor(g)); tbn.bias.copy_(torch.tensor(b))
    nvar=np.ones(C); e=0; es=0
    for step in range(4):
        x=rng.standard_normal((8,5,5,C))*3+2
        y,st=jn.batch_norm(x,g,b,st,training=True,convention=conv)
        tbn.train(); yt=tbn(torch.tensor(x).permute(0,3,1,2)).detach().permute(0,2,3,1).numpy()
        e=max(e,np.abs(np.asarray(y)-yt).max())
        if conv=='torch': es=max(es,np.abs(st.mean-tbn.running_mean.numpy()).max(),np.abs(st.var-tbn.running_var.numpy()).max())
        else:
            n=8*25; bv=x.reshape(-1,C).var(0); nvar=0.99*nvar+0.01*bv
            es=max(es,np.abs(st.mean-tbn.running_mean.numpy()).max(),np.abs(st.var-nvar).max())
    tbn.eval(); yi,_=jn.batch_norm(x,g,b,st,training=False); yti=tbn(torch.tensor(x).permute(0,3,1,2)).detach().permute(0,2,3,1).numpy()
    if conv=='torch': print(conv,'train y',e,'stats',es,'eval',np.abs(np.asarray(yi)-yti).max())
    else: print(conv,'train y',e,'stats',es)
