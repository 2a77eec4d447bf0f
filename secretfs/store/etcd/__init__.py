"""The etcd v3 backend: the SQLite backend's rows as keys under one prefix.

etcd holds only what SQLite holds: sealed, row-bound ciphertext and metadata. Keys
never leave the nodes. Its parts:

    gateway.py   etcd over httpx (JSON gateway and gRPC): endpoints, deadlines, TLS, auth
    txn.py       one Txn and its answer, whichever way it is sent
    kvgrpc.py    Range and Txn as protobuf over gRPC
    records.py   EtcdBackend: the store's records as keys, transactions as etcd Txns
    follower.py  a mount's in-memory copy, kept current by a watch; cluster health
    location.py  EtcdLocation: `etcd://host:port,.../prefix`, where the key file is
"""

from secretfs.store.etcd.location import DEFAULT_ETCD_PREFIX, EtcdLocation
from secretfs.store.etcd.records import EtcdBackend

__all__ = ["DEFAULT_ETCD_PREFIX", "EtcdBackend", "EtcdLocation"]
