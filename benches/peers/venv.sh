# Sourced by the peers' scripts: the virtualenv outside the repository, in $NABLA_PEERS_VENV
# (default ~/.cache/nabla/peers-venv), made on first use and brought up to requirements.txt on
# every use (a no-op once it is). Sets $venv.
venv="${NABLA_PEERS_VENV:-$HOME/.cache/nabla/peers-venv}"
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --upgrade pip
fi
"$venv/bin/pip" install --quiet -r benches/peers/requirements.txt
