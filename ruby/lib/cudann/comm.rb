# frozen_string_literal: true

module Cudann
  # Bytes of a communicator id (CUDANN_COMM_ID_BYTES).
  COMM_ID_BYTES = 128
  # Communicator#all_reduce's operations (CUDANN_SUM, CUDANN_AVG): the sum,
  # or the mean, over the ranks.
  SUM = 0
  AVG = 1

  # A new communicator id (cudann_comm_id): a binary String of COMM_ID_BYTES
  # bytes that rank 0 makes and hands to the other ranks (a file, a pipe).
  # NCCL's where NCCL and a GPU are usable; elsewhere good for one rank only.
  def self.comm_id
    buf = FFI::MemoryPointer.new(:uint8, COMM_ID_BYTES)
    check(Native.cudann_comm_id(buf))
    buf.read_bytes(COMM_ID_BYTES)
  end

  # A new Communicator; with a block, yields it and destroys it afterwards.
  def self.communicator(nranks = 1, rank = 0, id = nil, &block)
    with(Communicator.new(nranks, rank, id), :destroy, &block)
  end

  # A communicator for data-parallel training (cudann_comm_init): every rank
  # (a process per GPU, or a thread per GPU) runs the same step on its share
  # of the batch, then averages its gradients with the others'
  # (#all_reduce). More than one rank runs on NCCL; one rank needs nothing and
  # its collectives are exact copies, so a program written for N ranks runs
  # unchanged as one, anywhere. #destroy (or #close) releases it, once (again
  # does nothing); a destroyed communicator raises.
  class Communicator
    OPS = { sum: SUM, avg: AVG }.freeze

    attr_reader :nranks, :rank

    # Joins communicator id (a String from Cudann.comm_id; a fresh one when
    # nil, for one rank) as rank `rank` of `nranks`, on the calling thread's
    # current device. Blocks until every rank has joined.
    def initialize(nranks = 1, rank = 0, id = nil)
      fn = "Cudann::Communicator.new"
      id = Cudann.comm_id if id.nil?
      raise TypeError, "#{fn}: id must be a String (from Cudann.comm_id), got #{id.class}" unless id.is_a?(String)
      Cudann.invalid("#{fn}: id has #{id.bytesize} bytes, want #{COMM_ID_BYTES} (from Cudann.comm_id)") unless
        id.bytesize == COMM_ID_BYTES
      id_ptr = FFI::MemoryPointer.new(:uint8, COMM_ID_BYTES).tap { |p| p.put_bytes(0, id) }
      out = FFI::MemoryPointer.new(:pointer)
      Cudann.check(Native.cudann_comm_init(out, nranks, rank, id_ptr))
      @ptr = out.read_pointer
      @nranks = nranks
      @rank = rank
    end

    def closed?
      @ptr.nil?
    end
    alias destroyed? closed?

    # The handle, for FFI calls.
    def to_ptr
      handle("Cudann::Communicator#to_ptr")
    end

    # The sum (op: :sum) or mean (:avg) of the float tensor `send` over the
    # ranks (cudann_all_reduce), into `recv:` (a new tensor of send's kind by
    # default; recv may be send: in place). Cudann::SUM / Cudann::AVG work
    # as op too. Returns recv.
    def all_reduce(send, recv: nil, op: :avg, stream: nil)
      fn = "Cudann::Communicator#all_reduce"
      code = case op
             when Symbol then OPS.fetch(op) { Cudann.invalid("#{fn}: op must be :sum or :avg (got #{op.inspect})") }
             when Integer then op # the library refuses any but SUM and AVG
             else raise TypeError, "#{fn}: op must be :sum or :avg (got #{op.class})"
             end
      raise ArgumentError, "#{fn}: send is needed" if send.nil?

      collective(fn, :cudann_all_reduce, send, recv, code, stream)
    end

    # Rank `root`'s float tensor `send` into every rank's `recv:`
    # (cudann_broadcast; a new tensor of send's kind by default; recv may be
    # send). send is read on the root only: other ranks may pass nil with a
    # recv:. Returns recv.
    def broadcast(send, recv: nil, root: 0, stream: nil)
      fn = "Cudann::Communicator#broadcast"
      raise ArgumentError, "#{fn}: send or recv: is needed" if send.nil? && recv.nil?

      collective(fn, :cudann_broadcast, send, recv, root, stream)
    end

    # Destroys the communicator (cudann_comm_destroy, after the work enqueued
    # with it); again does nothing.
    def destroy
      return nil if closed?

      Cudann.check(Native.cudann_comm_destroy(@ptr))
      @ptr = nil
    end
    alias close destroy

    def inspect
      "#<Cudann::Communicator rank #{@rank} of #{@nranks}#{closed? ? ' (destroyed)' : ''}>"
    end

    private

    def handle(fn)
      Cudann.invalid("#{fn}: the communicator is destroyed") if closed?
      @ptr
    end

    # n elements (send's, else recv's) from send into recv, which is checked
    # against n or created like send; Arrays and Numo arrays are written back.
    def collective(fn, cfunc, send, recv, arg, stream)
      comm = handle(fn)
      stream_ptr = Cudann.stream_pointer(fn, stream)
      n = send.nil? ? Tensor.count(fn, :recv, recv, :f32) : Tensor.count(fn, :send, send, :f32)
      unless recv.nil?
        have = Tensor.count(fn, :recv, recv, :f32)
        Cudann.invalid("#{fn}: recv has #{have} elements, want #{n} (send's)") unless have == n
      end
      created = recv.nil? ? Tensor.new_like(send, :f32, n) : nil
      recv ||= created
      send_ptr, send_back = Tensor.pointer(send, :f32, n)
      recv_ptr, back = recv.equal?(send) ? [send_ptr, send_back] : Tensor.pointer(recv, :f32, n)
      begin
        Cudann.check(Native.public_send(cfunc, send_ptr, recv_ptr, n, arg, comm, stream_ptr))
      rescue Error
        created.free if created.is_a?(Memory)
        raise
      end
      back&.call
      recv
    end
  end
end
