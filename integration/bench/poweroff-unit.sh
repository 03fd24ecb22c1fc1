# Sourced by the benchmarks. add_poweroff_unit DIR: DIR is a copy of a
# tree's /etc/systemd/system; add a unit that powers the guest off once
# multi-user.target is reached, so a boot can be timed to its end. The
# copy comes in through a read-only bind, so the trees stay untouched.
add_poweroff_unit() {
	cat >"$1/poweroff-after-boot.service" <<'UNIT'
[Unit]
Description=Power off once multi-user.target is reached (benchmark)
After=multi-user.target

[Service]
Type=oneshot
ExecStart=/bin/systemctl poweroff --no-block
UNIT
	mkdir -p "$1/multi-user.target.wants"
	ln -sf ../poweroff-after-boot.service "$1/multi-user.target.wants/"
}
