package wire

// host.* methods: what this host can run.
var (
	HostVMCheck = Method[Empty, VMCheck]{"host.vm_check"}
)

var hostMethods = []spec{HostVMCheck}

// VMCheck is host.vm_check's result: whether this host runs microVM
// sandboxes and why not (docs/microvm.md).
type VMCheck struct {
	QEMU         *string `json:"qemu"`
	Assets       *string `json:"assets"`
	KVM          string  `json:"kvm"` // "usable", "unusable" or "absent"
	KVMReason    string  `json:"kvm_reason"`
	DefaultAccel *string `json:"default_accel"` // "kvm", "tcg" or nil
	Reason       string  `json:"reason"`
}
