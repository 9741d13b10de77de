package wire

// image.* methods: the image store under $LOCKBOX_HOME/images.
var (
	ImageList    = Method[Empty, ImageListResult]{"image.list"}
	ImageInspect = Method[NameParams, ImageInfo]{"image.inspect"}
	ImageRemove  = Method[NameParams, Empty]{"image.remove"}
	ImagePrune   = Method[Empty, ImagePruneResult]{"image.prune"}
	ImageImport  = Method[ImageImportParams, ImageInfo]{"image.import"}
	ImagePull    = Method[ImagePullParams, ImageInfo]{"image.pull"}
)

var imageMethods = []spec{ImageList, ImageInspect, ImageRemove, ImagePrune, ImageImport, ImagePull}

// ImageImportParams: Kind is "oci_layout" or "docker_archive".
type ImageImportParams struct {
	Kind      string `json:"kind"`
	Path      string `json:"path"`
	Reference string `json:"reference,omitempty"`
	Name      string `json:"name,omitempty"`
}

// ImagePullParams: Username and Password go together.
type ImagePullParams struct {
	Reference string  `json:"reference"`
	Username  *string `json:"username,omitempty"`
	Password  *string `json:"password,omitempty"`
	PlainHTTP bool    `json:"plain_http,omitempty"`
	Platform  string  `json:"platform,omitempty"`
}

type ImageListResult struct {
	Images []ImageInfo `json:"images"`
}

type ImageInfo struct {
	Digest      string      `json:"digest"`
	Names       []string    `json:"names"`
	Rootfs      string      `json:"rootfs"`
	Config      ImageConfig `json:"config"`
	Stats       ImageStats  `json:"stats"`
	Source      string      `json:"source"`
	CreatedUnix int64       `json:"created_unix"`
}

type ImageConfig struct {
	Env        []string `json:"env"`
	Workdir    *string  `json:"workdir,omitempty"`
	User       *string  `json:"user,omitempty"`
	Entrypoint []string `json:"entrypoint"`
	Cmd        []string `json:"cmd"`
}

type ImageStats struct {
	Entries          uint64 `json:"entries"`
	Bytes            uint64 `json:"bytes"`
	Layers           uint32 `json:"layers"`
	SkippedDevices   uint64 `json:"skipped_devices"`
	DroppedSetIDBits uint64 `json:"dropped_setid_bits"`
	ClampedIDs       uint64 `json:"clamped_ids"`
	Whiteouts        uint64 `json:"whiteouts"`
}

type ImagePruneResult struct {
	Removed         []string `json:"removed"`
	KeptInUse       []string `json:"kept_in_use"`
	RemovedTempDirs uint64   `json:"removed_temp_dirs"`
}
