package vmtest

// VFIOModules are the modules a guest needs to take an ivshmem-doorbell
// device's MSI-X interrupts through vfio-pci (see guest.OpenDoorbell), in
// load order (measured on the Debian 6.1 cloud kernel, whose VFIO is
// modular). vfio-pci binds only devices with an IOMMU group: boot q35 with
// [IntelIOMMUArgs].
var VFIOModules = []string{"irqbypass", "vfio_virqfd", "vfio", "vfio_iommu_type1", "vfio-pci-core", "vfio-pci"}

// IntelIOMMUArgs are the QEMU arguments for a virtual Intel IOMMU with
// interrupt remapping (q35 only; under KVM it also needs
// -machine kernel-irqchip=split). The Debian cloud kernel turns the IOMMU
// on by itself (INTEL_IOMMU_DEFAULT_ON_INTGPU_OFF).
var IntelIOMMUArgs = []string{"-device", "intel-iommu,intremap=on"}
