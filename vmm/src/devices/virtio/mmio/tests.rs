use super::*;
use crate::devices::virtio::{ActivateError, test_utils};
use virtio_bindings::virtio_config::{
    VIRTIO_CONFIG_S_ACKNOWLEDGE as STATUS_ACKNOWLEDGE, VIRTIO_CONFIG_S_DRIVER as STATUS_DRIVER,
    VIRTIO_CONFIG_S_DRIVER_OK as STATUS_DRIVER_OK, VIRTIO_CONFIG_S_FAILED as STATUS_FAILED,
    VIRTIO_CONFIG_S_FEATURES_OK as STATUS_FEATURES_OK,
};

struct Dummy {
    events: Vec<EventFd>,
    activated: Option<usize>,
    resets: usize,
}

impl VirtioDevice for Dummy {
    fn device_type(&self) -> u32 {
        42
    }
    fn queue_max_sizes(&self) -> &[u16] {
        &[16, 8]
    }
    fn features(&self) -> u64 {
        VIRTIO_F_VERSION_1 | 1 << 5
    }
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        super::super::read_config_bytes(&[1, 2, 3, 4], offset, data);
    }
    fn queue_events(&self) -> &[EventFd] {
        &self.events
    }
    fn activate(
        &mut self,
        _: GuestMemoryMmap,
        queues: Vec<Queue>,
        _: Arc<IrqTrigger>,
    ) -> Result<(), ActivateError> {
        self.activated = Some(queues.len());
        Ok(())
    }
    fn reset(&mut self) {
        self.activated = None;
        self.resets += 1;
    }
}

fn setup() -> (MmioTransport, Arc<Mutex<Dummy>>) {
    let events = (0..2)
        .map(|_| EventFd::new(libc::EFD_NONBLOCK).unwrap())
        .collect();
    let dummy = Arc::new(Mutex::new(Dummy {
        events,
        activated: None,
        resets: 0,
    }));
    let irq = Arc::new(IrqTrigger::new(EventFd::new(libc::EFD_NONBLOCK).unwrap()));
    let transport = MmioTransport::new(dummy.clone(), test_utils::memory(), irq).unwrap();
    (transport, dummy)
}

fn read(t: &mut MmioTransport, offset: u64) -> u32 {
    let mut data = [0u8; 4];
    t.read(offset, &mut data);
    u32::from_le_bytes(data)
}

fn write(t: &mut MmioTransport, offset: u64, value: u32) {
    t.write(offset, &value.to_le_bytes());
}

fn negotiate(t: &mut MmioTransport, features_high: u32) {
    write(t, 0x70, STATUS_ACKNOWLEDGE);
    write(t, 0x70, STATUS_ACKNOWLEDGE | STATUS_DRIVER);
    write(t, 0x24, 1);
    write(t, 0x20, features_high);
    write(
        t,
        0x70,
        STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK,
    );
}

fn setup_queue(t: &mut MmioTransport, index: u32, base: u64) {
    write(t, 0x30, index);
    write(t, 0x38, 8);
    write(t, 0x80, base as u32);
    write(t, 0x90, (base + 0x1000) as u32);
    write(t, 0xa0, (base + 0x2000) as u32);
    write(t, 0x44, 1);
}

#[test]
fn identifies_the_device() {
    let (mut t, _) = setup();
    assert_eq!(read(&mut t, 0x00), MAGIC);
    assert_eq!(read(&mut t, 0x04), 2);
    assert_eq!(read(&mut t, 0x08), 42);
    write(&mut t, 0x14, 1);
    assert_eq!(read(&mut t, 0x10), 1);
    write(&mut t, 0x14, 0);
    assert_eq!(read(&mut t, 0x10), 1 << 5);
    write(&mut t, 0x30, 1);
    assert_eq!(read(&mut t, 0x34), 8);
    write(&mut t, 0x30, 7);
    assert_eq!(
        read(&mut t, 0x34),
        0,
        "a queue that does not exist has size 0"
    );
    let mut config = [0u8; 2];
    t.read(CONFIG_OFFSET + 2, &mut config);
    assert_eq!(config, [3, 4]);
}

#[test]
fn full_driver_sequence_activates_the_device() {
    let (mut t, dummy) = setup();
    negotiate(&mut t, 1);
    assert_ne!(read(&mut t, 0x70) & STATUS_FEATURES_OK, 0);
    setup_queue(&mut t, 0, 0x10_0000);
    setup_queue(&mut t, 1, 0x20_0000);
    let status = read(&mut t, 0x70);
    write(&mut t, 0x70, status | STATUS_DRIVER_OK);
    assert_eq!(dummy.lock().unwrap().activated, Some(2));
    // Notifications reach the queue's event.
    write(&mut t, QUEUE_NOTIFY_OFFSET, 1);
    assert_eq!(dummy.lock().unwrap().events[1].read().unwrap(), 1);
    write(&mut t, QUEUE_NOTIFY_OFFSET, 9); // no such queue: ignored
    // Reset.
    write(&mut t, 0x70, 0);
    assert_eq!(read(&mut t, 0x70), 0);
    assert_eq!(dummy.lock().unwrap().resets, 1);
    assert_eq!(dummy.lock().unwrap().activated, None);
}

#[test]
fn refuses_a_legacy_driver_or_unknown_features() {
    let (mut t, dummy) = setup();
    negotiate(&mut t, 0); // no VERSION_1
    assert_eq!(read(&mut t, 0x70) & STATUS_FEATURES_OK, 0);
    write(&mut t, 0x70, 0);
    negotiate(&mut t, 1 | 2); // bit 33 was never offered
    assert_eq!(read(&mut t, 0x70) & STATUS_FEATURES_OK, 0);
    write(
        &mut t,
        0x70,
        STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_DRIVER_OK,
    );
    assert_eq!(dummy.lock().unwrap().activated, None);
}

#[test]
fn queues_outside_guest_memory_fail_the_device() {
    let (mut t, dummy) = setup();
    negotiate(&mut t, 1);
    setup_queue(&mut t, 0, 0xffff_0000);
    let status = read(&mut t, 0x70);
    write(&mut t, 0x70, status | STATUS_DRIVER_OK);
    assert_ne!(read(&mut t, 0x70) & STATUS_FAILED, 0);
    assert_eq!(dummy.lock().unwrap().activated, None);
}

#[test]
fn odd_sized_and_unaligned_accesses_are_harmless() {
    let (mut t, _) = setup();
    let mut byte = [0u8; 1];
    t.read(0, &mut byte);
    assert_eq!(byte, [0]);
    t.write(0x70, &[1]);
    t.write(0x71, &[1, 0, 0, 0]);
    assert_eq!(read(&mut t, 0x70), 0);
    write(&mut t, 0x30, u32::MAX);
    write(&mut t, 0x44, 1);
    write(&mut t, 0xfff, 1);
    let mut big = [0u8; 8];
    t.read(CONFIG_OFFSET + 0xeff, &mut big);
}

#[test]
fn interrupt_status_is_acknowledged() {
    let (mut t, _) = setup();
    t.irq.trigger(1);
    assert_eq!(read(&mut t, 0x60), 1);
    write(&mut t, 0x64, 1);
    assert_eq!(read(&mut t, 0x60), 0);
}
