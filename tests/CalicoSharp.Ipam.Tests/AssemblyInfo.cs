[assembly: CollectionBehavior(DisableTestParallelization = true)] // each etcd test starts etcd (and the storm 20 processes); two cores
