package lockbox

// installedLibraryPath returns the liblockbox.so that EnsureInstalled put
// in place, or "" when there is none. The loader tries it after
// WithLibraryPath and LOCKBOX_LIB. (Owned by the installer: it fills this
// in from the install tree.)
func installedLibraryPath() string {
	if inst := lastInstalled.Load(); inst != nil {
		return inst.LibraryPath
	}
	// Installed by another process (CI's lockbox-installer, an earlier
	// run): the same warm check as EnsureInstalled, with the defaults.
	s, err := resolveInstallSettings(nil)
	if err != nil {
		return ""
	}
	if inst, err := newInstaller(s).checkComplete(); err == nil {
		return inst.LibraryPath
	}
	return ""
}
