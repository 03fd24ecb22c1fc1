# NixOS-shaped system toplevels for nixspawn's tests, built by Debian's Nix
# 2.8 with `sandbox = false` and `/bin/sh` builders (no nixpkgs, no binary
# cache here). What matters is their shape: a store path with `init` and
# `bin/switch-to-configuration`, whose closure Nix records from references.
#
#   sidTree: a debootstrapped Debian sid tree (integration/fixtures/debian-tree.sh sid)
#   busybox: a static busybox binary on the host
{ sidTree ? null, busybox ? "/bin/busybox" }:
let
  system = "x86_64-linux";

  # A derivation built by /bin/sh running `script` (with $out set).
  build = name: script: derivation {
    inherit name system;
    builder = "/bin/sh";
    args = [ "-ec" script ];
    PATH = "/usr/bin:/bin";
  };

  bb = build "busybox-static" ''
    mkdir -p $out/bin
    cp ${/. + busybox} $out/bin/busybox
    chmod 555 $out/bin/busybox
    $out/bin/busybox --install -s $out/bin
  '';

  # A store path the tiny toplevel can depend on, to grow its closure.
  payload = tag: build "payload-${tag}" ''
    mkdir -p $out/share
    echo "payload ${tag}" > $out/share/payload
  '';

  # switch-to-configuration records which action ran, where the test can see it.
  switchScript = ''
    cat > $out/bin/switch-to-configuration <<EOS
    #!${bb}/bin/sh
    echo "\$1" > /run/switched-to-\$(${bb}/bin/busybox basename $out)
    EOS
    chmod 555 $out/bin/switch-to-configuration
  '';

  # A toplevel whose init is a busybox script: it reports what the store
  # looks like (argument `report`), exits (`exit`), or runs until
  # SIGRTMIN+3 (signal 37 under glibc), as container-init does.
  tiny = { tag, extra ? null }: build "nixos-system-tiny-${tag}" (''
    mkdir -p $out/bin
    cat > $out/init <<EOS
    #!${bb}/bin/sh
    export PATH=${bb}/bin
    ${if extra == null then "" else "# depends on ${extra}"}
    case "\$1" in
      exit) exit 0 ;;
      report)
        echo "entries:"; ls -A /nix/store
        echo "profile: \$(readlink /nix/var/nix/profiles/system)"
        echo "mounts:"; grep ' /nix/store' /proc/self/mountinfo
        touch /nix/store/new-entry 2>/dev/null && echo "store-writable" || echo "store-readonly"
        touch $out/new-file 2>/dev/null && echo "path-writable" || echo "path-readonly"
        exit 0 ;;
    esac
    trap 'exit 0' 37
    echo "tiny init ${tag} running"
    while :; do sleep 1 & wait \$!; done
    EOS
    chmod 555 $out/init
  '' + switchScript);

  sidUsr = build "debian-sid-usr" ''
    cp -RP --preserve=links ${sidTree}/usr $out
  '';
  # /etc as NixOS builds it: environment.etc becomes a store path
  # (/etc/static) of files to be linked, except that a file with a
  # NAME.mode beside it is installed as a copy with that mode. The user
  # database is not part of it: NixOS's activation writes passwd, group,
  # shadow and gshadow as regular files (update-users-groups), so they
  # travel separately (sidUsers). Nothing a package manager leaves behind
  # for itself comes along: no lock files (systemd 262's sysusers refuses a
  # symlinked /etc/.pwd.lock), no `-` backups, no dotfiles, nothing that is
  # the builder host's (machine-id, hostname, mtab).
  sidEtc = build "debian-sid-etc" ''
    cp -RP --preserve=links ${sidTree}/etc $out
    chmod -R u+w $out
    cd $out
    rm -f machine-id hostname mtab adjtime
    rm -f passwd group shadow gshadow subuid subgid
    find . -maxdepth 1 \( -name '.*' -o -name '*-' \) ! -name . -exec rm -rf {} +
    find . \( -name '*.lock' -o -name '*.dpkg-*' -o -name '*.ucf-*' \) -exec rm -rf {} +
    # As environment.etc."sudoers".mode = "0440" would: a copy, not a link.
    for f in login.defs; do [ -e $f ] && echo 0644 > $f.mode; done
  '';
  sidUsers = build "debian-sid-users" ''
    mkdir -p $out
    for f in passwd group shadow gshadow; do
      [ -e ${sidTree}/etc/$f ] && cp ${sidTree}/etc/$f $out/$f
    done
  '';

  # Stage 2 of a NixOS boot in a container, reduced to its contract: refuse
  # to run outside a container, lay out / from store paths (/usr, /etc as
  # links to /etc/static), point /run/current-system at the toplevel, and
  # exec systemd (here one imported from Debian sid).
  systemdToplevel = build "nixos-system-systemd" (''
    mkdir -p $out/bin
    cat > $out/init <<EOS
    #!${bb}/bin/sh
    bb=${bb}/bin/busybox
    if [ -z "\$container" ]; then
      echo "stage-2: \\\$container is not set; this system is built for a container" >&2
      exit 1
    fi
    # /usr may be a directory (nixos-container and systemd-nspawn want one):
    # bind the imported one over it rather than replace it.
    \$bb mkdir -p /usr
    \$bb mount --bind ${sidUsr} /usr
    for d in bin sbin lib lib64; do \$bb ln -sfn usr/\$d /\$d; done
    \$bb mkdir -p /etc /var/log /var/lib /var/tmp /root /home
    \$bb ln -sfn ${sidEtc} /etc/static
    # setup-etc: a link per entry, a copy where NAME.mode asks for one.
    for f in \$(\$bb ls -A /etc/static); do
      case "\$f" in *.mode) continue ;; esac
      if [ -e "/etc/static/\$f.mode" ]; then
        [ -L "/etc/\$f" ] && \$bb rm -f "/etc/\$f"
        \$bb cp "/etc/static/\$f" "/etc/\$f"
        \$bb chmod "\$(\$bb cat "/etc/static/\$f.mode")" "/etc/\$f"
      else
        \$bb ln -sfn "/etc/static/\$f" "/etc/\$f"
      fi
    done
    # update-users-groups: the user database as regular files, written
    # once and then owned by the system (a state directory keeps them).
    for f in passwd group shadow gshadow; do
      [ -f "/etc/\$f" ] && [ ! -L "/etc/\$f" ] && continue
      \$bb rm -f "/etc/\$f"
      \$bb cp "${sidUsers}/\$f" "/etc/\$f"
      case "\$f" in
        passwd|group) \$bb chmod 0644 "/etc/\$f" ;;
        *) \$bb chmod 0640 "/etc/\$f"
           \$bb chgrp "\$(\$bb awk -F: '\$1 == "shadow" { print \$3 }' /etc/group)" "/etc/\$f" ;;
      esac
    done
    \$bb ln -sfn /proc/mounts /etc/mtab
    [ -e /etc/machine-id ] || : > /etc/machine-id
    \$bb ln -sfn $out /run/current-system
    exec /usr/lib/systemd/systemd "\$@"
    EOS
    chmod 555 $out/init
  '' + switchScript);

  decoy = tag: build "decoy-${tag}" ''
    mkdir -p $out
    echo "not in any closure" > $out/decoy
  '';
in
{
  inherit bb;
  tiny = tiny { tag = "a"; };
  tiny2 = tiny { tag = "b"; extra = payload "b"; };
  decoyA = decoy "a";
  decoyB = decoy "b";
} // (if sidTree == null then { } else { systemd = systemdToplevel; })
