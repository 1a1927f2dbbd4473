"""Planted bugs for ``bench_mutation.py``: each is one text patch of the model (file under
``src/tdpsim``, exact old text occurring once, replacement), of the kinds upstream has fixed.
Classes: RCU, TLB, LOCK (an edge of a critical section or a barrier), GUEST (a vCPU in
guest mode racing the host), LOGIC (ordinary logic on a racy path)."""

from __future__ import annotations

MUTANTS: list[dict] = [
    # ------------------------------------------------------------------ RCU
    dict(name="rcu_map_walk_unprotected", cls="RCU",
         what="kvm_tdp_mmu_map walks without rcu_read_lock", file="model/tdp_mmu.py",
         old="""    ret = RET_PF_RETRY
    kvm.rcu.rcu_read_lock()
    walk = for_each_tdp_pte(kvm, root, fault.gfn, fault.gfn + 1)""",
         new="""    ret = RET_PF_RETRY
    walk = for_each_tdp_pte(kvm, root, fault.gfn, fault.gfn + 1)""",
         also=[("model/tdp_mmu.py", """                         "walk ended at the goal level")
    kvm.rcu.rcu_read_unlock()
    if lowered:""", """                         "walk ended at the goal level")
    if lowered:""")]),
    dict(name="rcu_map_unlock_early", cls="RCU",
         what="kvm_tdp_mmu_map drops rcu_read_lock once the walk has started",
         file="model/tdp_mmu.py",
         old="""    walk = for_each_tdp_pte(kvm, root, fault.gfn, fault.gfn + 1)
    for iter in walk:
        if iter.level == goal and is_mirror:""",
         new="""    walk = for_each_tdp_pte(kvm, root, fault.gfn, fault.gfn + 1)
    kvm.rcu.rcu_read_unlock()  # the root's entry was read: done?
    for iter in walk:
        if iter.level == goal and is_mirror:""",
         also=[("model/tdp_mmu.py", """                         "walk ended at the goal level")
    kvm.rcu.rcu_read_unlock()
    if lowered:""", """                         "walk ended at the goal level")
    if lowered:""")]),
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
         old="""    for level in levels + (root.role.level,):
        __tdp_mmu_zap_root(kvm, root, shared, level)
    kvm.rcu.rcu_read_unlock()""",
         new="""    kvm.rcu.rcu_read_unlock()
    for level in levels + (root.role.level,):
        __tdp_mmu_zap_root(kvm, root, shared, level)"""),
    # ------------------------------------------------------------------ TLB
    dict(name="tlb_zap_leafs_no_flush", cls="TLB",
         what="tdp_mmu_zap_leafs never reports a flush", file="model/tdp_mmu.py",
         old="""        if not root.role.invalid:
            flush = True""", new="""        if not root.role.invalid:
            pass"""),
    dict(name="tlb_notifier_no_flush", cls="TLB",
         what="the mmu_notifier invalidation forgets the flush", file="model/kvm_main.py",
         old="""        flush = kvm_tdp_mmu_unmap_gfn_range(kvm, start, end, KVM_FILTER_SHARED, blockable, flush)
    if flush:
        kvm.kvm_flush_remote_tlbs()""",
         new="""        flush = kvm_tdp_mmu_unmap_gfn_range(kvm, start, end, KVM_FILTER_SHARED, blockable, flush)"""),
    dict(name="tlb_dirty_log_no_flush", cls="TLB",
         what="enabling dirty logging does not flush after write-protecting",
         file="model/kvm_main.py",
         old="""    # Unconditional: the helpers may skip SPTEs whose W/D is already clear.
    kvm.kvm_flush_remote_tlbs_memslot(slot)""",
         new="""    # Unconditional: the helpers may skip SPTEs whose W/D is already clear."""),
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
         old="""        kvm.mmu_lock.write_lock()
        kvm_mmu_invalidate_end(kvm)
        kvm.mmu_lock.write_unlock()
    if not kvm.WARN_ON_ONCE(""",
         new="""        kvm.mmu_lock.write_lock()
        kvm.mmu_lock.write_unlock()
        kvm.mmu_lock.writer = True  # (no lockdep splat: the assert is missing too)
        kvm_mmu_invalidate_end(kvm)
        kvm.mmu_lock.writer = False
    if not kvm.WARN_ON_ONCE("""),
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
            kvm.sched.point(ROOTS, ROOTS_KEY, True)
            kvm.tdp_mmu_roots.insert(0, root)  # list_add_rcu adds at the head
        kvm.tdp_mmu_pages_lock.unlock()""",
         new="""            root.tdp_mmu_root_count = 2
            kvm.tdp_mmu_pages_lock.unlock()
            kvm.tdp_mmu_pages_lock.lock()
            kvm.sched.point(ROOTS, ROOTS_KEY, True)
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
        kvm.mmu_lock.write_unlock()
    if attrs & KVM_MEMORY_ATTRIBUTE_PRIVATE:""",
         also=[("model/kvm_main.py", """        kvm_arch_post_set_memory_attributes(kvm, slot, start, end, attrs)
        kvm_mmu_invalidate_end(kvm)
        kvm.mmu_lock.write_unlock()""", """        kvm_arch_post_set_memory_attributes(kvm, slot, start, end, attrs)
        kvm.mmu_lock.write_unlock()""")]),
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

# Fresh bugs (session 3), written before the checks that see them were built, as a KVM
# developer would introduce them: the kill rate on these alone is the honest estimate of
# the explorer's power on bugs it was not tuned to.  ``also``: further (file, old, new)
# patches of the same bug.
FRESH: list[dict] = [
    # ------------------------------------------------------------------ RCU
    dict(name="rcu_wrprot_unprotected", cls="RCU",
         what="wrprot_gfn_range walks the roots without rcu_read_lock", file="model/tdp_mmu.py",
         old="""    spte_set = False
    kvm.rcu.rcu_read_lock()
    for iter in for_each_tdp_pte_min_level(kvm, root, min_level, start, end):
        while not tdp_mmu_iter_cond_resched(kvm, iter, False, True):""",
         new="""    spte_set = False
    for iter in for_each_tdp_pte_min_level(kvm, root, min_level, start, end):
        while not tdp_mmu_iter_cond_resched(kvm, iter, False, True):""",
         also=[("model/tdp_mmu.py", """PT_WRITABLE_MASK):
                spte_set = True
                break
    kvm.rcu.rcu_read_unlock()
    return spte_set""", """PT_WRITABLE_MASK):
                spte_set = True
                break
    return spte_set""")]),
    dict(name="rcu_recover_unprotected", cls="RCU",
         what="recover_huge_pages_range walks without rcu_read_lock", file="model/tdp_mmu.py",
         old="""    for root in for_each_tdp_mmu_root_yield_safe(kvm, KVM_DIRECT_ROOTS):
        kvm.rcu.rcu_read_lock()
        for iter in for_each_tdp_pte_min_level(kvm, root, PG_LEVEL_2M, slot.base_gfn,
                                               slot.end_gfn):
            if tdp_mmu_iter_cond_resched(kvm, iter, flush, True):
                flush = False
                continue
            flush |= _recover_one(kvm, slot, iter)
        kvm.rcu.rcu_read_unlock()""",
         new="""    for root in for_each_tdp_mmu_root_yield_safe(kvm, KVM_DIRECT_ROOTS):
        for iter in for_each_tdp_pte_min_level(kvm, root, PG_LEVEL_2M, slot.base_gfn,
                                               slot.end_gfn):
            if tdp_mmu_iter_cond_resched(kvm, iter, flush, True):
                flush = False
                continue
            flush |= _recover_one(kvm, slot, iter)"""),
    dict(name="rcu_fast_pf_unprotected", cls="RCU",
         what="fast_page_fault walks locklessly without walk_shadow_page_lockless_begin",
         file="model/mmu_fault.py",
         old="""    kvm.rcu.rcu_read_lock()
    ret = RET_PF_INVALID
    retry_count = 0""", new="""    ret = RET_PF_INVALID
    retry_count = 0""",
         also=[("model/mmu_fault.py", """                                 sptep_address(sp, index), spte, sp.spt[index], ret))
    kvm.rcu.rcu_read_unlock()""", """                                 sptep_address(sp, index), spte, sp.spt[index], ret))""")]),
    dict(name="rcu_free_now_under_write_lock", cls="RCU",
         what="handle_removed_pt frees at once under the write lock ('no walker can run')",
         file="model/tdp_mmu.py",
         old="""        sp.external_spt = None  # leak it: the kernel must never touch an encrypted page
    tdp_mmu_free_sp_rcu(kvm, sp)""",
         new="""        sp.external_spt = None  # leak it: the kernel must never touch an encrypted page
    if shared:
        tdp_mmu_free_sp_rcu(kvm, sp)
    else:
        tdp_mmu_free_sp(kvm, sp)"""),
    # ------------------------------------------------------------------ TLB
    dict(name="tlb_nx_recovery_no_flush", cls="TLB",
         what="the NX recovery worker zaps tables without the final flush",
         file="model/kvm_main.py",
         old="""    if flush:
        kvm.kvm_flush_remote_tlbs()
    kvm.rcu.rcu_read_unlock()
    kvm.mmu_lock.read_unlock()
    return zapped""", new="""    kvm.rcu.rcu_read_unlock()
    kvm.mmu_lock.read_unlock()
    return zapped"""),
    dict(name="tlb_attr_no_flush", cls="TLB",
         what="KVM_SET_MEMORY_ATTRIBUTES unmaps the old side without flushing",
         file="model/kvm_main.py",
         old="""        if kvm_arch_pre_set_memory_attributes(kvm, slot, start, end, attrs):
            kvm.kvm_flush_remote_tlbs()""",
         new="""        kvm_arch_pre_set_memory_attributes(kvm, slot, start, end, attrs)"""),
    dict(name="tlb_flush_request_no_wait", cls="TLB",
         what="KVM_REQ_TLB_FLUSH treated as a no-WAIT request: EXITING vCPUs not waited for",
         file="model/kvm.py",
         old="""            sp.point(BARRIER, vcpu.mode_key, True)
            if vcpu.mode == OUTSIDE_GUEST_MODE:
                continue""",
         new="""            sp.point(BARRIER, vcpu.mode_key, True)
            if vcpu.mode != IN_GUEST_MODE:
                continue"""),
    dict(name="tlb_dirty_log_flush_first", cls="TLB",
         what="enabling dirty logging flushes before write-protecting instead of after",
         file="model/kvm_main.py",
         old="""    if kvm.policy.eager_page_split:
        kvm_mmu_slot_try_split_huge_pages(kvm, slot, PG_LEVEL_4K)""",
         new="""    kvm.kvm_flush_remote_tlbs_memslot(slot)
    if kvm.policy.eager_page_split:
        kvm_mmu_slot_try_split_huge_pages(kvm, slot, PG_LEVEL_4K)""",
         also=[("model/kvm_main.py", """    # Unconditional: the helpers may skip SPTEs whose W/D is already clear.
    kvm.kvm_flush_remote_tlbs_memslot(slot)""", """    # Unconditional: the helpers may skip SPTEs whose W/D is already clear.""")]),
    # ------------------------------------------------------------------ lock edges / barriers
    dict(name="lock_wrprot_after_unlock", cls="LOCK",
         what="kvm_mmu_slot_remove_write_access drops mmu_lock before write-protecting",
         file="model/dirty_log.py",
         old="""    kvm.mmu_lock.read_lock()
    kvm_tdp_mmu_wrprot_slot(kvm, slot, start_level)
    kvm.mmu_lock.read_unlock()""",
         new="""    kvm.mmu_lock.read_lock()
    kvm.mmu_lock.read_unlock()
    kvm_tdp_mmu_wrprot_slot(kvm, slot, start_level)"""),
    dict(name="lock_zap_all_fast_read_lock", cls="LOCK",
         what="kvm_mmu_zap_all_fast invalidates the roots under the read lock",
         file="model/kvm_main.py",
         old="""    kvm.mmu_lock.write_lock()
    kvm_tdp_mmu_invalidate_roots(kvm, KVM_DIRECT_ROOTS)
    kvm.mmu_lock.write_unlock()""",
         new="""    kvm.mmu_lock.read_lock()
    kvm_tdp_mmu_invalidate_roots(kvm, KVM_DIRECT_ROOTS)
    kvm.mmu_lock.read_unlock()"""),
    dict(name="lock_alloc_root_no_recheck", cls="LOCK",
         what="kvm_tdp_mmu_alloc_root does not re-check for a root under tdp_mmu_pages_lock",
         file="model/tdp_mmu.py",
         old="""        kvm.tdp_mmu_pages_lock.lock()
        root = _find_root(kvm, role.word)
        if root is None:""", new="""        kvm.tdp_mmu_pages_lock.lock()
        if root is None:"""),
    dict(name="lock_punch_end_before_free", cls="LOCK",
         what="the guest_memfd punch ends the invalidation before freeing the pages",
         file="model/kvm_main.py",
         old="""    base = slot.gmem_offset - slot.base_gfn
    slot.gmem.punch_hole(start + base, end + base)
    kvm.mmu_lock.write_lock()
    kvm_mmu_invalidate_end(kvm)
    kvm.mmu_lock.write_unlock()""",
         new="""    base = slot.gmem_offset - slot.base_gfn
    kvm.mmu_lock.write_lock()
    kvm_mmu_invalidate_end(kvm)
    kvm.mmu_lock.write_unlock()
    slot.gmem.punch_hole(start + base, end + base)"""),
    dict(name="lock_untrack_outside_pages_lock", cls="LOCK",
         what="tdp_mmu_unlink_sp untracks the NX page outside tdp_mmu_pages_lock",
         file="model/tdp_mmu.py",
         old="""    kvm.tdp_mmu_pages_lock.lock()
    sp.nx_huge_page_disallowed = False
    untrack_possible_nx_huge_page(kvm, sp, KVM_TDP_MMU)
    kvm.tdp_mmu_pages_lock.unlock()""",
         new="""    kvm.tdp_mmu_pages_lock.lock()
    sp.nx_huge_page_disallowed = False
    kvm.tdp_mmu_pages_lock.unlock()
    untrack_possible_nx_huge_page(kvm, sp, KVM_TDP_MMU)"""),
    dict(name="lock_attr_check_before_seq", cls="LOCK",
         what="kvm_mmu_faultin_pfn checks the attribute before snapshotting mmu_invalidate_seq",
         file="model/mmu_fault.py",
         old="""    kvm.sched.point(MMU_INVALIDATE, MMU_INVALIDATE_KEY, False)
    fault.mmu_seq = kvm.mmu_invalidate_seq
    kvm.sched.point(BARRIER, MMU_INVALIDATE_KEY, False)  # smp_rmb(): seq before the pfn
    if fault.is_private != kvm.kvm_mem_is_private(fault.gfn):
        return kvm_mmu_prepare_memory_fault_exit(vcpu, fault)   # userspace must convert""",
         new="""    if fault.is_private != kvm.kvm_mem_is_private(fault.gfn):
        return kvm_mmu_prepare_memory_fault_exit(vcpu, fault)   # userspace must convert
    kvm.sched.point(MMU_INVALIDATE, MMU_INVALIDATE_KEY, False)
    fault.mmu_seq = kvm.mmu_invalidate_seq
    kvm.sched.point(BARRIER, MMU_INVALIDATE_KEY, False)  # smp_rmb(): seq before the pfn"""),
    # ------------------------------------------------------------------ guests in the race
    dict(name="guest_track_no_kick", cls="GUEST",
         what="tdx_track bumps the epoch but does not kick the vCPUs", file="model/tdx.py",
         old="""        self.TDX_BUG_ON(kvm, r, "tdx_track", "TDH.MEM.TRACK")
        self.kick_all_vcpus(kvm)""",
         new="""        self.TDX_BUG_ON(kvm, r, "tdx_track", "TDH.MEM.TRACK")"""),
    dict(name="guest_remove_no_track", cls="GUEST",
         what="tdx_sept_remove_private_spte removes without tdx_track after BLOCK",
         file="model/tdx.py",
         old="""        if self.TDX_BUG_ON(kvm, r, fn_name, "TDH.MEM.RANGE.BLOCK"):
            return
        self.tdx_track(kvm)""",
         new="""        if self.TDX_BUG_ON(kvm, r, fn_name, "TDH.MEM.RANGE.BLOCK"):
            return"""),
    dict(name="guest_exit_check_before_mode", cls="GUEST",
         what="entry checks requests before publishing IN_GUEST_MODE (smp_mb pair broken)",
         file="model/kvm.py",
         old="""    sp.point(VCPU, vcpu.mode_key, True)
    vcpu.irqs_disabled = True
    vcpu.mode = IN_GUEST_MODE
    sp.point(BARRIER, vcpu.req_key, False)
    if vcpu.mode == EXITING_GUEST_MODE or vcpu.requests:""",
         new="""    sp.point(BARRIER, vcpu.req_key, False)
    pending = bool(vcpu.requests)
    sp.point(VCPU, vcpu.mode_key, True)
    vcpu.irqs_disabled = True
    vcpu.mode = IN_GUEST_MODE
    if vcpu.mode == EXITING_GUEST_MODE or pending:"""),
    dict(name="guest_busy_retry_no_kick", cls="GUEST",
         what="tdh_do_no_vcpus retries after BUSY without kicking the vCPUs out",
         file="model/tdx.py",
         old="""            self.wait_for_sept_zap = True
            self.kick_all_vcpus(kvm)""", new="""            self.wait_for_sept_zap = True"""),
    # ------------------------------------------------------------------ ordinary logic
    dict(name="logic_fast_pf_plain_write", cls="LOGIC",
         what="fast_pf_fix_direct_spte writes the SPTE instead of cmpxchg (no mmu_lock held)",
         file="model/mmu_fault.py",
         old="""    ok, _ = try_cmpxchg64(vcpu.kvm, sp, index, old_spte, new_spte)
    if not ok:
        return False""",
         new="""    vcpu.kvm.sched.point("spte_write", ("spte", sp.spt_pfn, index), True)
    sp.spt[index] = new_spte"""),
]

# Fresh bugs (session 4), written before this session's data-race check and scenarios, by
# the same rule as ``FRESH``: the kill rate on these before the checks is the estimate.
FRESH4: list[dict] = [
    # ------------------------------------------------------------------ RCU
    dict(name="rcu_put_root_free_now", cls="RCU",
         what="kvm_tdp_mmu_put_root frees the root at once instead of through call_rcu",
         file="model/tdp_mmu.py",
         old="""    kvm.tdp_mmu_roots.remove(root)
    kvm.tdp_mmu_pages_lock.unlock()
    tdp_mmu_free_sp_rcu(kvm, root)""",
         new="""    kvm.tdp_mmu_roots.remove(root)
    kvm.tdp_mmu_pages_lock.unlock()
    tdp_mmu_free_sp(kvm, root)"""),
    dict(name="rcu_fast_pf_unlock_before_fix", cls="RCU",
         what="fast_page_fault leaves the lockless walk before the cmpxchg on the SPTE",
         file="model/mmu_fault.py",
         old="""        if fast_pf_fix_direct_spte(vcpu, fault, sp, index, spte, new_spte):
            ret = RET_PF_FIXED
            break""",
         new="""        kvm.rcu.rcu_read_unlock()  # the walk is over: only the cmpxchg is left
        fixed = fast_pf_fix_direct_spte(vcpu, fault, sp, index, spte, new_spte)
        kvm.rcu.rcu_read_lock()
        if fixed:
            ret = RET_PF_FIXED
            break"""),
    # ------------------------------------------------------------------ TLB
    dict(name="tlb_yield_no_flush", cls="TLB",
         what="tdp_mmu_iter_cond_resched yields without the flush the caller has pending",
         file="model/tdp_mmu.py",
         old="""    if flush:
        kvm.kvm_flush_remote_tlbs()
    kvm.rcu.rcu_read_unlock()
    _mmu_unlock(kvm, shared)""",
         new="""    kvm.rcu.rcu_read_unlock()
    _mmu_unlock(kvm, shared)"""),
    dict(name="tlb_promote_no_flush", cls="TLB",
         what="a fault that replaces a table by a huge leaf does not flush the 4K entries",
         file="model/tdp_mmu.py",
         old="""        # A table was replaced by a huge leaf (promotion): stale 4K translations must go.
        kvm.kvm_flush_remote_tlbs_gfn(iter.gfn, iter.level)""",
         new="""        pass"""),
    # ------------------------------------------------------------------ lock edges / barriers
    dict(name="lock_track_nx_after_pages_unlock", cls="LOCK",
         what="the fault tracks a possible NX huge page after dropping tdp_mmu_pages_lock",
         file="model/tdp_mmu.py",
         old="""        kvm.tdp_mmu_pages_lock.lock()
        if sp.nx_huge_page_disallowed:
            track_possible_nx_huge_page(kvm, sp, KVM_TDP_MMU)
        kvm.tdp_mmu_pages_lock.unlock()""",
         new="""        kvm.tdp_mmu_pages_lock.lock()
        disallowed = sp.nx_huge_page_disallowed
        kvm.tdp_mmu_pages_lock.unlock()
        if disallowed:
            track_possible_nx_huge_page(kvm, sp, KVM_TDP_MMU)"""),
    dict(name="lock_put_root_del_unlocked", cls="LOCK",
         what="kvm_tdp_mmu_put_root does list_del_rcu without tdp_mmu_pages_lock",
         file="model/tdp_mmu.py",
         old="""    kvm.tdp_mmu_pages_lock.lock()
    kvm.sched.point(ROOTS, ROOTS_KEY, True)  # list_del_rcu
    kvm.tdp_mmu_roots.remove(root)
    kvm.tdp_mmu_pages_lock.unlock()""",
         new="""    kvm.sched.point(ROOTS, ROOTS_KEY, True)  # list_del_rcu
    kvm.tdp_mmu_roots.remove(root)"""),
    dict(name="lock_nx_recover_untrack_unlocked", cls="LOCK",
         what="NX recovery picks the SP under tdp_mmu_pages_lock but untracks it after",
         file="model/kvm_main.py",
         old="""        sp = nx_huge_pages[0]
        kvm.WARN_ON_ONCE(not sp.nx_huge_page_disallowed, "kvm_recover_nx_huge_pages",
                         "tracked SP not NX-disallowed")
        sp.nx_huge_page_disallowed = False  # unaccount_nx_huge_page
        untrack_possible_nx_huge_page(kvm, sp, KVM_TDP_MMU)
        kvm.tdp_mmu_pages_lock.unlock()
        if _nx_huge_page_recoverable(kvm, sp):""",
         new="""        sp = nx_huge_pages[0]
        kvm.tdp_mmu_pages_lock.unlock()
        kvm.WARN_ON_ONCE(not sp.nx_huge_page_disallowed, "kvm_recover_nx_huge_pages",
                         "tracked SP not NX-disallowed")
        sp.nx_huge_page_disallowed = False  # unaccount_nx_huge_page
        untrack_possible_nx_huge_page(kvm, sp, KVM_TDP_MMU)
        if _nx_huge_page_recoverable(kvm, sp):"""),
    # ------------------------------------------------------------------ guests in the race
    dict(name="guest_request_after_mode_read", cls="GUEST",
         what="kvm_make_all_cpus_request reads vcpu->mode before setting the request bit",
         file="model/kvm.py",
         old="""            if req != KVM_REQ_OUTSIDE_GUEST_MODE:
                sp.point(VCPU, vcpu.req_key, True)
                vcpu.kvm_make_request(req)
            sp.point(BARRIER, vcpu.mode_key, True)
            if vcpu.mode == OUTSIDE_GUEST_MODE:
                continue""",
         new="""            sp.point(BARRIER, vcpu.mode_key, True)
            outside = vcpu.mode == OUTSIDE_GUEST_MODE
            if req != KVM_REQ_OUTSIDE_GUEST_MODE:
                sp.point(VCPU, vcpu.req_key, True)
                vcpu.kvm_make_request(req)
            if outside:
                continue"""),
    dict(name="guest_track_kick_first", cls="GUEST",
         what="tdx_track kicks the vCPUs before TDH.MEM.TRACK bumps the epoch",
         file="model/tdx.py",
         old="""        r = self.tdh_do_no_vcpus(kvm, "tdx_track", "TDH.MEM.TRACK", 0, 0,
                                 self.module.tdh_mem_track)
        self.TDX_BUG_ON(kvm, r, "tdx_track", "TDH.MEM.TRACK")
        self.kick_all_vcpus(kvm)""",
         new="""        self.kick_all_vcpus(kvm)
        r = self.tdh_do_no_vcpus(kvm, "tdx_track", "TDH.MEM.TRACK", 0, 0,
                                 self.module.tdh_mem_track)
        self.TDX_BUG_ON(kvm, r, "tdx_track", "TDH.MEM.TRACK")"""),
    dict(name="guest_sept_zap_cleared_before_retry", cls="GUEST",
         what="tdh_do_no_vcpus lets vCPUs back in before the retried SEAMCALL",
         file="model/tdx.py",
         old="""            r = self._seamcall(function, leaf, gfn, level, fn, *args)
            kvm.sched.point(VCPU, SEPT_ZAP_KEY, True)
            self.wait_for_sept_zap = False""",
         new="""            kvm.sched.point(VCPU, SEPT_ZAP_KEY, True)
            self.wait_for_sept_zap = False
            r = self._seamcall(function, leaf, gfn, level, fn, *args)"""),
]

# Fresh bugs (session 5), written before this session's scenarios and checks (the RCU root
# walker, the two-vCPU S-EPT-zap race, a cheap NX-untrack race), by the same rule as
# ``FRESH``: kinds upstream has fixed, placed where a KVM developer would slip.
FRESH5: list[dict] = [
    # ------------------------------------------------------------------ RCU
    dict(name="rcu_nx_recover_shared_no_rcu", cls="RCU",
         what="the read-lock NX recovery reads and zaps the parent SPTE without rcu_read_lock",
         file="model/kvm_main.py",
         old="""    kvm.mmu_lock.read_lock()
    kvm.rcu.rcu_read_lock()
    for _ in range(to_zap):""",
         new="""    kvm.mmu_lock.read_lock()
    for _ in range(to_zap):""",
         also=[("model/kvm_main.py", """            kvm.rcu.rcu_read_unlock()
            kvm.mmu_lock.read_unlock()
            kvm.mmu_lock.read_lock()
            kvm.rcu.rcu_read_lock()""", """            kvm.mmu_lock.read_unlock()
            kvm.mmu_lock.read_lock()"""),
               ("model/kvm_main.py", """        kvm.kvm_flush_remote_tlbs()
    kvm.rcu.rcu_read_unlock()
    kvm.mmu_lock.read_unlock()
    return zapped""", """        kvm.kvm_flush_remote_tlbs()
    kvm.mmu_lock.read_unlock()
    return zapped""")]),
    dict(name="rcu_put_root_free_before_del", cls="RCU",
         what="kvm_tdp_mmu_put_root queues the RCU free before list_del_rcu (readers that "
              "find the root afterwards are not waited for)",
         file="model/tdp_mmu.py",
         old="""    kvm.tdp_mmu_pages_lock.lock()
    kvm.sched.point(ROOTS, ROOTS_KEY, True)  # list_del_rcu
    kvm.tdp_mmu_roots.remove(root)
    kvm.tdp_mmu_pages_lock.unlock()
    tdp_mmu_free_sp_rcu(kvm, root)""",
         new="""    tdp_mmu_free_sp_rcu(kvm, root)
    kvm.tdp_mmu_pages_lock.lock()
    kvm.sched.point(ROOTS, ROOTS_KEY, True)  # list_del_rcu
    kvm.tdp_mmu_roots.remove(root)
    kvm.tdp_mmu_pages_lock.unlock()"""),
    dict(name="rcu_clear_dirty_unprotected", cls="RCU",
         what="clear_dirty_gfn_range (PML dirty-log enable) walks without rcu_read_lock",
         file="model/tdp_mmu.py",
         old="""    spte_set = False
    kvm.rcu.rcu_read_lock()
    for iter in for_each_tdp_pte(kvm, root, start, end):
        while (is_shadow_present_pte(iter.old_spte)""",
         new="""    spte_set = False
    for iter in for_each_tdp_pte(kvm, root, start, end):
        while (is_shadow_present_pte(iter.old_spte)""",
         also=[("model/tdp_mmu.py", """                spte_set = True
                break
    kvm.rcu.rcu_read_unlock()
    return spte_set


def kvm_tdp_mmu_clear_dirty_slot""", """                spte_set = True
                break
    return spte_set


def kvm_tdp_mmu_clear_dirty_slot""")]),
    # ------------------------------------------------------------------ TLB
    dict(name="tlb_zap_leafs_flush_4k_only", cls="TLB",
         what="tdp_mmu_zap_leafs asks for a flush only after zapping a 4K leaf",
         file="model/tdp_mmu.py",
         old="""        if not root.role.invalid:
            flush = True""",
         new="""        if not root.role.invalid and iter.level == PG_LEVEL_4K:
            flush = True"""),
    dict(name="tlb_unmap_flush_per_root", cls="TLB",
         what="kvm_tdp_mmu_unmap_gfn_range keeps only the last root's flush",
         file="model/tdp_mmu.py",
         old="""    for root in for_each_tdp_mmu_root_yield_safe(kvm, types):
        flush = tdp_mmu_zap_leafs(kvm, root, start, end, may_block, flush)
    return flush""",
         new="""    for root in for_each_tdp_mmu_root_yield_safe(kvm, types):
        flush = tdp_mmu_zap_leafs(kvm, root, start, end, may_block, False)
    return flush"""),
    # ------------------------------------------------------------------ lock edges / barriers
    dict(name="lock_notifier_zap_before_begin", cls="LOCK",
         what="invalidate_range_start zaps (and drops mmu_lock) before publishing the "
              "invalidation",
         file="model/kvm_main.py",
         old="""        if not found:
            found = True
            kvm.mmu_lock.write_lock()
            kvm_mmu_invalidate_begin(kvm)
        kvm_mmu_invalidate_range_add(kvm, start, end)
        flush = kvm_tdp_mmu_unmap_gfn_range(kvm, start, end, KVM_FILTER_SHARED, blockable, flush)""",
         new="""        kvm.mmu_lock.write_lock()
        if kvm_tdp_mmu_unmap_gfn_range(kvm, start, end, KVM_FILTER_SHARED, blockable, False):
            kvm.kvm_flush_remote_tlbs()
        kvm.mmu_lock.write_unlock()
        if not found:
            found = True
            kvm.mmu_lock.write_lock()
            kvm_mmu_invalidate_begin(kvm)
        kvm_mmu_invalidate_range_add(kvm, start, end)"""),
    dict(name="lock_stale_ignores_invalid_root", cls="LOCK",
         what="is_page_fault_stale does not check for an obsolete root under mmu_lock",
         file="model/mmu_fault.py",
         old="""    if vcpu.root is not None and vcpu.root.role.invalid:
        return True
    return fault.slot is not None""",
         new="""    return fault.slot is not None"""),
    dict(name="lock_write_spte_no_xchg", cls="LOCK",
         what="kvm_tdp_mmu_write_spte writes leaves with volatile bits plainly (A/D bits set "
              "by the CPU meanwhile are lost)",
         file="model/tdp_mmu.py",
         old="""    if kvm_tdp_mmu_spte_need_atomic_write(kvm.masks, old_spte, level):
        return kvm_tdp_mmu_write_spte_atomic(kvm, sp, index, new_spte)
    __kvm_tdp_mmu_write_spte(kvm, sp, index, new_spte)""",
         new="""    __kvm_tdp_mmu_write_spte(kvm, sp, index, new_spte)"""),
    # ------------------------------------------------------------------ guests in the race
    dict(name="guest_busy_enter_no_exit", cls="GUEST",
         what="tdx_vcpu_run leaves IN_GUEST_MODE set when TDH.VP.ENTER returns BUSY",
         file="model/tdx.py",
         old="""        if tdx_operand_busy(r.status):
            self.stats.vcpu_enter_refused += 1
            kvm_vcpu_guest_exited(vcpu)
            return EXIT_FASTPATH_EXIT_HANDLED""",
         new="""        if tdx_operand_busy(r.status):
            self.stats.vcpu_enter_refused += 1
            return EXIT_FASTPATH_EXIT_HANDLED"""),
    dict(name="guest_track_kick_only_after_busy", cls="GUEST",
         what="tdx_track kicks the vCPUs only when TDH.MEM.TRACK was BUSY ('else no vCPU "
              "was in the TD')",
         file="model/tdx.py",
         old="""        r = self.tdh_do_no_vcpus(kvm, "tdx_track", "TDH.MEM.TRACK", 0, 0,
                                 self.module.tdh_mem_track)
        self.TDX_BUG_ON(kvm, r, "tdx_track", "TDH.MEM.TRACK")
        self.kick_all_vcpus(kvm)""",
         new="""        busy = self.stats.busy_retries
        r = self.tdh_do_no_vcpus(kvm, "tdx_track", "TDH.MEM.TRACK", 0, 0,
                                 self.module.tdh_mem_track)
        self.TDX_BUG_ON(kvm, r, "tdx_track", "TDH.MEM.TRACK")
        if self.stats.busy_retries != busy:
            self.kick_all_vcpus(kvm)"""),
]

# Fresh bugs (session 6), written blind (before this session's explorer changes, without
# reading them), by the same rule as ``FRESH``: kinds upstream has fixed, on modelled paths.
FRESH6: list[dict] = [
    # ------------------------------------------------------------------ RCU
    dict(name="rcu_split_alloc_no_restart", cls="RCU",
         what="tdp_mmu_split_huge_pages_root drops RCU and mmu_lock to allocate, then goes "
              "on from the table it read before (the iterator is not restarted)",
         file="model/tdp_mmu.py",
         old="""                kvm.rcu.rcu_read_lock()
                iter.yielded = True  # restart from the root at this gfn
                break""",
         new="""                kvm.rcu.rcu_read_lock()
                break"""),
    dict(name="rcu_zap_invalidated_put_first", cls="RCU",
         what="kvm_tdp_mmu_zap_invalidated_roots drops the TDP MMU's reference before "
              "zapping the root (the last put frees it via call_rcu; the zap walks it after)",
         file="model/tdp_mmu.py",
         old="""        root.tdp_mmu_scheduled_root_to_zap = False
        tdp_mmu_zap_root(kvm, root, shared)
        kvm_tdp_mmu_put_root(kvm, root)""",
         new="""        root.tdp_mmu_scheduled_root_to_zap = False
        kvm_tdp_mmu_put_root(kvm, root)
        tdp_mmu_zap_root(kvm, root, shared)"""),
    dict(name="rcu_get_root_inc_zero", cls="RCU",
         what="kvm_tdp_mmu_get_root uses refcount_inc, not refcount_inc_not_zero (a root "
              "whose last reference is gone is resurrected while its free is queued)",
         file="model/tdp_mmu.py",
         old="""    if root.tdp_mmu_root_count == 0:
        return False
    root.tdp_mmu_root_count += 1
    return True""",
         new="""    root.tdp_mmu_root_count += 1
    return True"""),
    # ------------------------------------------------------------------ TLB
    dict(name="tlb_get_dirty_log_flush_first", cls="TLB",
         what="KVM_GET_DIRTY_LOG flushes the memslot before re-protecting the dirty pages, "
              "not after",
         file="model/dirty_log.py",
         old="""        buffer = bytearray(n)
        kvm.mmu_lock.write_lock()""",
         new="""        buffer = bytearray(n)
        kvm.kvm_flush_remote_tlbs_memslot(slot)
        kvm.mmu_lock.write_lock()""",
         also=[("model/dirty_log.py", """        kvm.mmu_lock.write_unlock()
    if flush:
        kvm.kvm_flush_remote_tlbs_memslot(slot)
    user_bitmap[:n] = buffer""", """        kvm.mmu_lock.write_unlock()
    user_bitmap[:n] = buffer""")]),
    dict(name="tlb_flush_memslot_zap_no_flush", cls="TLB",
         what="kvm_arch_flush_shadow_memslot (no SLOT_ZAP_ALL) zaps the slot's leaves "
              "without flushing",
         file="model/kvm_main.py",
         old="""    if kvm_tdp_mmu_unmap_gfn_range(kvm, slot.base_gfn, slot.end_gfn, KVM_FILTER_SHARED
                                   | KVM_FILTER_PRIVATE, True, False):
        kvm.kvm_flush_remote_tlbs()""",
         new="""    kvm_tdp_mmu_unmap_gfn_range(kvm, slot.base_gfn, slot.end_gfn, KVM_FILTER_SHARED
                                | KVM_FILTER_PRIVATE, True, False)"""),
    dict(name="tlb_zap_leafs_yield_drops_flush", cls="TLB",
         what="tdp_mmu_zap_leafs yields without handing its pending flush to "
              "tdp_mmu_iter_cond_resched, and forgets it",
         file="model/tdp_mmu.py",
         old="""        if can_yield and tdp_mmu_iter_cond_resched(kvm, iter, flush, False):
            flush = False
            continue""",
         new="""        if can_yield and tdp_mmu_iter_cond_resched(kvm, iter, False, False):
            flush = False
            continue"""),
    # ------------------------------------------------------------------ lock edges / barriers
    dict(name="lock_retry_gfn_seq_only_idle", cls="LOCK",
         what="mmu_invalidate_retry_gfn checks mmu_invalidate_seq only when no invalidation "
              "is in progress (one elsewhere hides a finished one on this gfn)",
         file="model/mmu_fault.py",
         old="""    kvm.mmu_lock.lockdep_assert_held()
    kvm.sched.point(MMU_INVALIDATE, MMU_INVALIDATE_KEY, False)
    if kvm.mmu_invalidate_in_progress and (
            kvm.mmu_invalidate_range_start <= gfn < kvm.mmu_invalidate_range_end):
        return True
    return kvm.mmu_invalidate_seq != mmu_seq""",
         new="""    kvm.mmu_lock.lockdep_assert_held()
    kvm.sched.point(MMU_INVALIDATE, MMU_INVALIDATE_KEY, False)
    if kvm.mmu_invalidate_in_progress:
        return kvm.mmu_invalidate_range_start <= gfn < kvm.mmu_invalidate_range_end
    return kvm.mmu_invalidate_seq != mmu_seq"""),
    dict(name="lock_get_dirty_log_clear_after_protect", cls="LOCK",
         what="KVM_GET_DIRTY_LOG clears the bitmap word after re-protecting its pages (a "
              "lockless fast-PF write in between loses its dirty bit)",
         file="model/dirty_log.py",
         old="""            _set_word(dirty_bitmap, i, 0)  # xchg(&dirty_bitmap[i], 0)
            _set_word(buffer, i, mask)
            kvm_arch_mmu_enable_log_dirty_pt_masked(kvm, slot, i * BITS_PER_LONG, mask)""",
         new="""            _set_word(buffer, i, mask)
            kvm_arch_mmu_enable_log_dirty_pt_masked(kvm, slot, i * BITS_PER_LONG, mask)
            _set_word(dirty_bitmap, i, 0)"""),
    dict(name="lock_memslot_invalid_after_zap", cls="LOCK",
         what="kvm_invalidate_memslot zaps the slot before publishing it KVM_MEMSLOT_INVALID "
              "(a fault in between maps the dying slot again)",
         file="model/kvm_main.py",
         old="""    invalid_slot.flags |= KVM_MEMSLOT_INVALID
    kvm_replace_memslot(kvm, old, invalid_slot)
    kvm_swap_active_memslots(kvm)
    kvm_arch_flush_shadow_memslot(kvm, old)""",
         new="""    kvm_arch_flush_shadow_memslot(kvm, old)
    invalid_slot.flags |= KVM_MEMSLOT_INVALID
    kvm_replace_memslot(kvm, old, invalid_slot)
    kvm_swap_active_memslots(kvm)"""),
    # ------------------------------------------------------------------ guests in the race
    dict(name="guest_remove_no_busy_retry", cls="GUEST",
         what="tdx_sept_remove_private_spte calls TDH.MEM.PAGE.REMOVE directly, not through "
              "tdh_do_no_vcpus (a guest TDCALL holding the S-EPT lock makes it BUSY)",
         file="model/tdx.py",
         old="""        r = self.tdh_do_no_vcpus(kvm, fn_name, "TDH.MEM.PAGE.REMOVE", gfn, level,
                                 self.module.tdh_mem_page_remove, gpa, tdx_level)""",
         new="""        r = self._seamcall(fn_name, "TDH.MEM.PAGE.REMOVE", gfn, level,
                           self.module.tdh_mem_page_remove, gpa, tdx_level)"""),
    dict(name="guest_track_kick_tlb_request", cls="GUEST",
         what="tdx_track kicks with KVM_REQ_TLB_FLUSH instead of KVM_REQ_OUTSIDE_GUEST_MODE "
              "(vCPUs service it in place and stay in the TD, in the old epoch)",
         file="model/tdx.py",
         old="""        self.TDX_BUG_ON(kvm, r, "tdx_track", "TDH.MEM.TRACK")
        self.kick_all_vcpus(kvm)""",
         new="""        self.TDX_BUG_ON(kvm, r, "tdx_track", "TDH.MEM.TRACK")
        self.kick_all_vcpus(kvm, KVM_REQ_TLB_FLUSH)"""),
    dict(name="guest_accept_inhibit_after_unlock", cls="GUEST",
         what="tdx_honor_guest_accept_level sets GUEST_INHIBIT after dropping mmu_lock (a "
              "fault in between maps the huge page the ACCEPT just split)",
         file="model/tdx.py",
         old="""        if not ret:
            hugepage_set_guest_inhibit(slot, gfn, level + 1)
            if level == PG_LEVEL_4K:
                hugepage_set_guest_inhibit(slot, gfn, level + 2)
        kvm.mmu_lock.write_unlock()
        return ret""",
         new="""        kvm.mmu_lock.write_unlock()
        if not ret:
            hugepage_set_guest_inhibit(slot, gfn, level + 1)
            if level == PG_LEVEL_4K:
                hugepage_set_guest_inhibit(slot, gfn, level + 2)
        return ret"""),
]

# Session 8, written by the lead before any of the session's lanes landed and without
# reading their work (the lead knew only which fresh6 survivors each lane targets:
# memslot deletion, overlapping invalidations, guest ACCEPT's inhibit window, root
# refcounts; two of the bugs below lie near those: ``lock_invalidate_range_add_replace``
# and ``lock_tdx_local_retry_ignores_invalid_slot``).
FRESH7: list[dict] = [
    # ------------------------------------------------------------------ RCU
    dict(name="rcu_cond_resched_no_yield_mark", cls="RCU",
         what="tdp_mmu_iter_cond_resched does not mark the iterator yielded: after mmu_lock "
              "and RCU were dropped the walk goes on from the table it read before",
         file="model/tdp_mmu.py",
         old="""                     "iterator ahead of next_last_level_gfn")
    iter.yielded = True
    return True""",
         new="""                     "iterator ahead of next_last_level_gfn")
    return True"""),
    # ------------------------------------------------------------------ TLB / stale mappings
    dict(name="tlb_unmap_skips_invalid_roots", cls="TLB",
         what="kvm_tdp_mmu_unmap_gfn_range skips invalid roots (a vCPU that has not yet "
              "reloaded keeps using one, with a mapping of the invalidated range)",
         file="model/tdp_mmu.py",
         old="""    types = kvm_gfn_range_filter_to_root_types(kvm, attr_filter) | KVM_INVALID_ROOTS""",
         new="""    types = kvm_gfn_range_filter_to_root_types(kvm, attr_filter)"""),
    dict(name="tlb_clear_dirty_log_no_flush", cls="TLB",
         what="KVM_CLEAR_DIRTY_LOG re-protects the cleared pages but never flushes",
         file="model/dirty_log.py",
         old="""        if mask:
            flush = True
            kvm_arch_mmu_enable_log_dirty_pt_masked(kvm, slot, offset, mask)""",
         new="""        if mask:
            kvm_arch_mmu_enable_log_dirty_pt_masked(kvm, slot, offset, mask)"""),
    # ------------------------------------------------------------------ lock edges
    dict(name="lock_invalidate_range_add_replace", cls="LOCK",
         what="kvm_mmu_invalidate_range_add replaces the in-flight range instead of widening "
              "it (a second invalidation hides the first one's gfns from faults)",
         file="model/kvm_main.py",
         old="""    if kvm.mmu_invalidate_range_start == INVALID_GPA:
        kvm.mmu_invalidate_range_start, kvm.mmu_invalidate_range_end = start, end
    else:
        kvm.mmu_invalidate_range_start = min(kvm.mmu_invalidate_range_start, start)
        kvm.mmu_invalidate_range_end = max(kvm.mmu_invalidate_range_end, end)""",
         new="""    kvm.mmu_invalidate_range_start, kvm.mmu_invalidate_range_end = start, end"""),
    dict(name="lock_tdx_local_retry_ignores_invalid_slot", cls="LOCK",
         what="tdx_handle_ept_violation's local retry loop keeps retrying on a memslot being "
              "deleted, holding SRCU (the deletion's synchronize_srcu never returns)",
         file="model/tdx.py",
         old="""            # An invalid (being deleted/moved) memslot never faults in: let SRCU go.
            slot = kvm.gfn_to_memslot(gfn)
            if slot is not None and slot.flags & KVM_MEMSLOT_INVALID:
                return ret
""",
         new=""),
    # ------------------------------------------------------------------ guests in the race
    dict(name="guest_request_skips_outside_vcpus", cls="GUEST",
         what="kvm_make_all_cpus_request sets the request only on vCPUs not outside guest "
              "mode (one about to enter misses the flush it needs)",
         file="model/kvm.py",
         old="""            if req != KVM_REQ_OUTSIDE_GUEST_MODE:
                sp.point(VCPU, vcpu.req_key, True)
                vcpu.kvm_make_request(req)
            sp.point(BARRIER, vcpu.mode_key, True)
            if vcpu.mode == OUTSIDE_GUEST_MODE:
                continue""",
         new="""            sp.point(BARRIER, vcpu.mode_key, True)
            if vcpu.mode == OUTSIDE_GUEST_MODE:
                continue
            if req != KVM_REQ_OUTSIDE_GUEST_MODE:
                sp.point(VCPU, vcpu.req_key, True)
                vcpu.kvm_make_request(req)"""),
    dict(name="guest_remove_track_before_block", cls="GUEST",
         what="tdx_sept_remove_private_spte runs TDH.MEM.TRACK + kick before "
              "TDH.MEM.RANGE.BLOCK (vCPUs may cache the page again before the block)",
         file="model/tdx.py",
         old="""        r = self.tdh_do_no_vcpus(kvm, fn_name, "TDH.MEM.RANGE.BLOCK", gfn, level,
                                 self.module.tdh_mem_range_block, gpa, tdx_level)
        if self.TDX_BUG_ON(kvm, r, fn_name, "TDH.MEM.RANGE.BLOCK"):
            return
        self.tdx_track(kvm)""",
         new="""        self.tdx_track(kvm)
        r = self.tdh_do_no_vcpus(kvm, fn_name, "TDH.MEM.RANGE.BLOCK", gfn, level,
                                 self.module.tdh_mem_range_block, gpa, tdx_level)
        if self.TDX_BUG_ON(kvm, r, fn_name, "TDH.MEM.RANGE.BLOCK"):
            return"""),
]

# The sets ``bench_mutation.py --set`` offers, oldest first: each was written before the
# scenarios and checks of the session that followed it, so its first run is a blind figure.
SETS: dict[str, list[dict]] = {"old": MUTANTS, "fresh": FRESH, "fresh4": FRESH4,
                               "fresh5": FRESH5, "fresh6": FRESH6,
                               "fresh7": FRESH7}
