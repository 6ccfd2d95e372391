# The container's root mount made unbindable. mntv2 7ae472d and 58d23b3 (mntv2 restore): the
# restored root was private (the planner skipped namespace roots for unbindable, and verify
# does not compare a root's propagation, so it said identical). Identical from main 6bb8451.
mount --make-unbindable /
