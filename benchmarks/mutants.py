"""Planted bugs for ``bench_mutation.py``: each is one text patch of the model (file under
``src/tdpsim``, exact old text occurring once, replacement), of the kinds upstream has fixed.
Classes: RCU, TLB, LOCK (an edge of a critical section or a barrier), GUEST (a vCPU in
guest mode racing the host), LOGIC (ordinary logic on a racy path)."""

from __future__ import annotations

MUTANTS: list[dict] = [
    # ------------------------------------------------------------------ RCU
    dict(name="rcu_map_walk_unprotected", cls="RCU",
         what="kvm_tdp_mmu_map walks without rcu_read_lock", file="model/tdp_mmu.py",
         old='    ret = RET_PF_RETRY\n    kvm.rcu.rcu_read_lock()\n    walk = for_each_tdp_pte(kvm, root, fault.gfn, fault.gfn + 1)\n    for iter in walk:\n        if guarded:\n            disallowed_hugepage_adjust(kvm, fault, iter.old_spte, iter.level)\n        # Another thread froze it: give up rather than allocate and free a table.\n        if is_frozen_spte(kvm.profile, iter.old_spte):\n            break\n        if iter.level == fault.goal_level:\n            ret = _map_target_level(vcpu, fault, iter, root)\n            break\n        if is_shadow_present_pte(iter.old_spte) and not is_large_pte(iter.old_spte):\n            continue\n        if not _install_child_sp(vcpu, fault, iter):\n            break\n    else:\n        # The walk ended before the goal, e.g. an upper SPTE changed under it.\n        kvm.WARN_ON_ONCE(walk.level == fault.goal_level, "kvm_tdp_mmu_map",\n                         "walk ended at the goal level")\n    kvm.rcu.rcu_read_unlock()\n    return ret',
         new='    ret = RET_PF_RETRY\n    walk = for_each_tdp_pte(kvm, root, fault.gfn, fault.gfn + 1)\n    for iter in walk:\n        if guarded:\n            disallowed_hugepage_adjust(kvm, fault, iter.old_spte, iter.level)\n        # Another thread froze it: give up rather than allocate and free a table.\n        if is_frozen_spte(kvm.profile, iter.old_spte):\n            break\n        if iter.level == fault.goal_level:\n            ret = _map_target_level(vcpu, fault, iter, root)\n            break\n        if is_shadow_present_pte(iter.old_spte) and not is_large_pte(iter.old_spte):\n            continue\n        if not _install_child_sp(vcpu, fault, iter):\n            break\n    else:\n        # The walk ended before the goal, e.g. an upper SPTE changed under it.\n        kvm.WARN_ON_ONCE(walk.level == fault.goal_level, "kvm_tdp_mmu_map",\n                         "walk ended at the goal level")\n    return ret'),
    dict(name="rcu_map_unlock_early", cls="RCU",
         what="kvm_tdp_mmu_map drops rcu_read_lock once the walk has started",
         file="model/tdp_mmu.py", old='    ret = RET_PF_RETRY\n    kvm.rcu.rcu_read_lock()\n    walk = for_each_tdp_pte(kvm, root, fault.gfn, fault.gfn + 1)\n    for iter in walk:\n        if guarded:\n            disallowed_hugepage_adjust(kvm, fault, iter.old_spte, iter.level)\n        # Another thread froze it: give up rather than allocate and free a table.\n        if is_frozen_spte(kvm.profile, iter.old_spte):\n            break\n        if iter.level == fault.goal_level:\n            ret = _map_target_level(vcpu, fault, iter, root)\n            break\n        if is_shadow_present_pte(iter.old_spte) and not is_large_pte(iter.old_spte):\n            continue\n        if not _install_child_sp(vcpu, fault, iter):\n            break\n    else:\n        # The walk ended before the goal, e.g. an upper SPTE changed under it.\n        kvm.WARN_ON_ONCE(walk.level == fault.goal_level, "kvm_tdp_mmu_map",\n                         "walk ended at the goal level")\n    kvm.rcu.rcu_read_unlock()\n    return ret',
         new='    ret = RET_PF_RETRY\n    kvm.rcu.rcu_read_lock()\n    walk = for_each_tdp_pte(kvm, root, fault.gfn, fault.gfn + 1)\n    kvm.rcu.rcu_read_unlock()  # the root\'s entry was read: done?\n    for iter in walk:\n        if guarded:\n            disallowed_hugepage_adjust(kvm, fault, iter.old_spte, iter.level)\n        # Another thread froze it: give up rather than allocate and free a table.\n        if is_frozen_spte(kvm.profile, iter.old_spte):\n            break\n        if iter.level == fault.goal_level:\n            ret = _map_target_level(vcpu, fault, iter, root)\n            break\n        if is_shadow_present_pte(iter.old_spte) and not is_large_pte(iter.old_spte):\n            continue\n        if not _install_child_sp(vcpu, fault, iter):\n            break\n    else:\n        # The walk ended before the goal, e.g. an upper SPTE changed under it.\n        kvm.WARN_ON_ONCE(walk.level == fault.goal_level, "kvm_tdp_mmu_map",\n                         "walk ended at the goal level")\n    return ret'),
    dict(name="rcu_free_sp_direct", cls="RCU",
         what="a removed table is freed at once instead of through call_rcu",
         file="model/tdp_mmu.py",
         old="""    sp.rcu_state = SP_RCU_PENDING
    kvm.rcu.call_rcu(lambda: tdp_mmu_free_sp_rcu_callback(kvm, sp))""",
         new="""    sp.rcu_state = SP_RCU_PENDING
    tdp_mmu_free_sp_rcu_callback(kvm, sp)"""),
    dict(name="rcu_grace_period_short", cls="RCU",
         what="a grace period ends when any one reader leaves", file="model/locking.py",
         old="""            waiting.discard(cpu)""", new="""            waiting.clear()"""),
    dict(name="rcu_zap_root_unprotected", cls="RCU",
         what="tdp_mmu_zap_root walks without rcu_read_lock", file="model/tdp_mmu.py",
         old="""    kvm.mmu_lock.assert_held(shared)
    kvm.rcu.rcu_read_lock()
    for level in (PG_LEVEL_4K, PG_LEVEL_2M, PG_LEVEL_2M + 1, root.role.level):
        __tdp_mmu_zap_root(kvm, root, shared, level)
    kvm.rcu.rcu_read_unlock()""",
         new="""    kvm.mmu_lock.assert_held(shared)
    for level in (PG_LEVEL_4K, PG_LEVEL_2M, PG_LEVEL_2M + 1, root.role.level):
        __tdp_mmu_zap_root(kvm, root, shared, level)"""),
    # ------------------------------------------------------------------ TLB
    dict(name="tlb_zap_leafs_no_flush", cls="TLB",
         what="tdp_mmu_zap_leafs never reports a flush", file="model/tdp_mmu.py",
         old="""        if not root.role.invalid:
            flush = True""", new="""        if not root.role.invalid:
            pass"""),
    dict(name="tlb_notifier_no_flush", cls="TLB",
         what="the mmu_notifier invalidation forgets the flush", file="model/kvm_main.py",
         old="""    if kvm_tdp_mmu_unmap_gfn_range(kvm, start, end, KVM_FILTER_SHARED, True, False):
        kvm.kvm_flush_remote_tlbs()""",
         new="""    kvm_tdp_mmu_unmap_gfn_range(kvm, start, end, KVM_FILTER_SHARED, True, False)"""),
    dict(name="tlb_dirty_log_no_flush", cls="TLB",
         what="enabling dirty logging does not flush after write-protecting",
         file="model/kvm_main.py",
         old="""    kvm_tdp_mmu_wrprot_slot(kvm, slot, PG_LEVEL_4K)  # kvm_mmu_slot_remove_write_access
    kvm.mmu_lock.read_unlock()
    kvm.kvm_flush_remote_tlbs_memslot(slot)""",
         new="""    kvm_tdp_mmu_wrprot_slot(kvm, slot, PG_LEVEL_4K)  # kvm_mmu_slot_remove_write_access
    kvm.mmu_lock.read_unlock()"""),
    dict(name="tlb_recover_no_flush", cls="TLB",
         what="recovering huge pages replaces tables by huge leaves without a flush",
         file="model/tdp_mmu.py",
         old="""    if flush:
        kvm.kvm_flush_remote_tlbs_memslot(slot)""", new="""    pass"""),
    dict(name="tlb_entry_skips_flush", cls="TLB",
         what="vcpu_enter_guest drops KVM_REQ_TLB_FLUSH without flushing", file="model/vmx.py",
         old="""    if vcpu.kvm_check_request("KVM_REQ_TLB_FLUSH"):
        vcpu.tlb.flush()""", new="""    vcpu.kvm_check_request("KVM_REQ_TLB_FLUSH")"""),
    dict(name="tlb_zap_all_fast_no_reload", cls="TLB",
         what="vCPUs are not told to drop obsolete roots (no KVM_REQ_MMU_FREE_OBSOLETE_ROOTS)",
         file="model/tdp_mmu.py",
         old="""    kvm.kvm_make_all_cpus_request("KVM_REQ_MMU_FREE_OBSOLETE_ROOTS")""",
         new="""    pass"""),
    # ------------------------------------------------------------------ lock edges / barriers
    dict(name="lock_stale_check_outside", cls="LOCK",
         what="is_page_fault_stale is checked before taking mmu_lock", file="model/mmu_fault.py",
         old="""    r = RET_PF_RETRY
    kvm.mmu_lock.read_lock()
    if not is_page_fault_stale(vcpu, fault):
        r = kvm_tdp_mmu_map(vcpu, fault)
    kvm.mmu_lock.read_unlock()""",
         new="""    r = RET_PF_RETRY
    stale = is_page_fault_stale(vcpu, fault)
    kvm.mmu_lock.read_lock()
    if not stale:
        r = kvm_tdp_mmu_map(vcpu, fault)
    kvm.mmu_lock.read_unlock()"""),
    dict(name="lock_invalidate_end_after_unlock", cls="LOCK",
         what="the notifier ends its invalidation after dropping mmu_lock",
         file="model/kvm_main.py",
         old="""        kvm.kvm_flush_remote_tlbs()
    kvm_mmu_invalidate_end(kvm)
    kvm.mmu_lock.write_unlock()""",
         new="""        kvm.kvm_flush_remote_tlbs()
    kvm.mmu_lock.write_unlock()
    kvm.mmu_lock.writer = True
    kvm_mmu_invalidate_end(kvm)
    kvm.mmu_lock.writer = False"""),
    dict(name="lock_mmu_seq_late", cls="LOCK",
         what="mmu_invalidate_seq is snapshotted after the pfn lookup (missing smp_rmb order)",
         file="model/mmu_fault.py",
         old="""    fault.mmu_seq = kvm.mmu_invalidate_seq
    kvm.sched.point(BARRIER, MMU_INVALIDATE_KEY, False)  # smp_rmb(): seq before the pfn
""", new="""    kvm.sched.point(BARRIER, MMU_INVALIDATE_KEY, False)
"""),
    dict(name="lock_pages_lock_early_unlock", cls="LOCK",
         what="kvm_tdp_mmu_alloc_root drops tdp_mmu_pages_lock before publishing the root",
         file="model/tdp_mmu.py",
         old="""            root.tdp_mmu_root_count = 2
            kvm.tdp_mmu_roots.insert(0, root)  # list_add_rcu adds at the head
        kvm.tdp_mmu_pages_lock.unlock()""",
         new="""            root.tdp_mmu_root_count = 2
            kvm.tdp_mmu_pages_lock.unlock()
            kvm.tdp_mmu_pages_lock.lock()
            kvm.tdp_mmu_roots.insert(0, root)  # list_add_rcu adds at the head
        kvm.tdp_mmu_pages_lock.unlock()"""),
    dict(name="lock_attr_store_outside_invalidation", cls="LOCK",
         what="KVM_SET_MEMORY_ATTRIBUTES ends the invalidation before storing the attributes",
         file="model/kvm_main.py",
         old="""            kvm.kvm_flush_remote_tlbs()
        kvm.mmu_lock.write_unlock()
    if attrs & KVM_MEMORY_ATTRIBUTE_PRIVATE:""",
         new="""            kvm.kvm_flush_remote_tlbs()
        kvm_mmu_invalidate_end(kvm)
        kvm.mmu_invalidate_in_progress += 1
        kvm.mmu_lock.write_unlock()
    if attrs & KVM_MEMORY_ATTRIBUTE_PRIVATE:"""),
    # ------------------------------------------------------------------ guests in the race
    dict(name="guest_no_exit_request_check", cls="GUEST",
         what="entry does not re-check requests/kicks after IN_GUEST_MODE", file="model/kvm.py",
         old="""    if vcpu.mode == EXITING_GUEST_MODE or vcpu.requests:
        vcpu.entry_cancels += 1
        kvm_vcpu_guest_exited(vcpu)
        return False
    return True""", new="""    return True"""),
    dict(name="guest_kick_skips_entering", cls="GUEST",
         what="the kick only IPIs vCPUs already running the guest (not the entry window)",
         file="model/kvm.py",
         old="""            if vcpu.mode == OUTSIDE_GUEST_MODE:
                continue""", new="""            if vcpu.mode == OUTSIDE_GUEST_MODE or not vcpu.in_guest:
                continue"""),
    dict(name="guest_kick_no_wait", cls="GUEST",
         what="KVM_REQUEST_WAIT kicks do not wait for the acknowledgement", file="model/kvm.py",
         old="""        for vcpu in waits:
            while vcpu.ipi_pending:""", new="""        for vcpu in ():
            while vcpu.ipi_pending:"""),
    dict(name="guest_double_exit", cls="GUEST",
         what="after an ACCEPT's EPT-violation exit KVM drops the epoch reference again",
         file="model/tdx.py",
         old="""            else:
                # TD exit; KVM handles it and the TDCALL runs again after re-entry.
                self.tdx._td_exited(vcpu)""",
         new="""            else:
                # TD exit; KVM handles it and the TDCALL runs again after re-entry.
                self.tdx.module.refcount[self.tdx.module.vcpus[vcpu.vcpu_id].epoch & 1] -= 1
                self.tdx._td_exited(vcpu)"""),
    dict(name="guest_no_wait_for_sept_zap", cls="GUEST",
         what="tdh_do_no_vcpus retries without keeping vCPUs out", file="model/tdx.py",
         old="""            self.wait_for_sept_zap = True""", new="""            pass"""),
    dict(name="guest_sept_zap_check_first", cls="GUEST",
         what="tdx_vcpu_run reads wait_for_sept_zap before setting IN_GUEST_MODE",
         file="model/tdx.py",
         old="""        if not kvm_vcpu_enter_guest_mode(vcpu):
            self.stats.vcpu_enter_refused += 1
            return EXIT_FASTPATH_EXIT_HANDLED
        kvm.sched.point(VCPU, SEPT_ZAP_KEY, False)
        if self.wait_for_sept_zap:""",
         new="""        kvm.sched.point(VCPU, SEPT_ZAP_KEY, False)
        zap = self.wait_for_sept_zap
        if not kvm_vcpu_enter_guest_mode(vcpu):
            self.stats.vcpu_enter_refused += 1
            return EXIT_FASTPATH_EXIT_HANDLED
        if zap:"""),
    # ------------------------------------------------------------------ ordinary logic
    dict(name="logic_cmpxchg_ignored", cls="LOGIC",
         what="a failed cmpxchg in __tdp_mmu_set_spte_atomic is treated as success",
         file="model/tdp_mmu.py",
         old="""    if not ok:
        iter.old_spte = cur
        return -EBUSY
    return 0""", new="""    return 0"""),
    dict(name="logic_no_freeze_wait", cls="LOGIC",
         what="handle_removed_pt does not wait out a frozen child SPTE", file="model/tdp_mmu.py",
         old="""                if old_spte != frozen:  # is_frozen_spte
                    break""", new="""                break"""),
    dict(name="logic_retry_check_ignores_seq", cls="LOGIC",
         what="mmu_invalidate_retry_gfn ignores a finished invalidation (seq)",
         file="model/mmu_fault.py",
         old="""        return True
    return kvm.mmu_invalidate_seq != mmu_seq


def mmu_invalidate_retry_gfn_unsafe""", new="""        return True
    return False


def mmu_invalidate_retry_gfn_unsafe"""),
    dict(name="logic_nx_zap_wrong_child", cls="LOGIC",
         what="the NX recovery zaps the parent SPTE without checking it still points to sp",
         file="model/tdp_mmu.py",
         old="""    if spte_to_child_pt(kvm, iter.old_spte, iter.level) is not sp:
        return False""", new="""    if not is_shadow_present_pte(iter.old_spte):
        return False"""),
]
