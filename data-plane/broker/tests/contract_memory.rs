//! The broker contract suite against [`MemoryBroker`], the in-process engine.

use aviary_broker::memory::MemoryBroker;

async fn memory_broker() -> MemoryBroker {
    MemoryBroker::new()
}

aviary_broker::broker_contract_tests!(memory_broker);
