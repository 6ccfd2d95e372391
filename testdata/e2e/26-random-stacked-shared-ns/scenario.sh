# A self-bind stacked on a tmpfs (two mounts on /tmp/t1), then a nested namespace made with
# --propagation shared. mntv2 58d23b3 (CRIU + hook, both modes): "post-restore: apply sharing:
# step 13 (make-shared) for namespace 11, mount 72 (/): mount(MS_SHARED): invalid argument":
# peeling (needed for the stacked mounts) opened every mount but the namespace root, whose handle
# was left fd 0. Identical from main 6bb8451.
mkdir /tmp/t1; mount -t tmpfs t1 /tmp/t1; mount --bind /tmp/t1 /tmp/t1
cd /
mkdir -p /.rt
cat >/.rt/ns.sh <<'EOF'
:
touch /.rt/ready
exec sleep 100001 </dev/null >/dev/null 2>&1
EOF
unshare --mount --propagation shared bash /.rt/ns.sh </dev/null >/dev/null 2>&1 &
for _ in $(seq 500); do [ -e /.rt/ready ] && break; sleep 0.01; done
